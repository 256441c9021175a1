//! Proposal outcomes on the wire, for forwarded proposals.

use ferry_proto::peer::{forward_response, ForwardResponse, Refusal};
use ferry_replica::ProposeError;
use ferry_state::Outcome;

pub(crate) fn outcome_to_wire(result: Result<Outcome, ProposeError>) -> ForwardResponse {
    use forward_response::Result as R;
    let result = match result {
        Ok(Outcome::Applied) => R::Applied(true),
        Ok(Outcome::SessionOpened { session_id }) => R::SessionOpened(session_id),
        Ok(Outcome::Refused(r)) => R::Refused(Refusal {
            kind: ferry_proto::peer::RefusalKind::from(r.kind) as i32,
            message: r.message,
        }),
        Err(ProposeError::NotLeader { leader }) => R::NotLeader(leader),
        Err(ProposeError::NoLeader) => R::NotLeader(0),
        Err(e) => R::Error(e.to_string()),
    };
    ForwardResponse {
        result: Some(result),
    }
}

pub(crate) fn outcome_from_wire(response: ForwardResponse) -> Result<Outcome, ProposeError> {
    use forward_response::Result as R;
    match response.result {
        Some(R::Applied(_)) => Ok(Outcome::Applied),
        Some(R::SessionOpened(session_id)) => Ok(Outcome::SessionOpened { session_id }),
        Some(R::Refused(r)) => Ok(Outcome::Refused(ferry_state::Refusal::new(
            r.kind().into(),
            r.message,
        ))),
        Some(R::NotLeader(leader)) => Err(ProposeError::NotLeader { leader }),
        Some(R::Error(e)) => Err(ProposeError::Leader(e)),
        None => Err(ProposeError::Leader("it sent an empty answer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_state::{Refusal as StateRefusal, RefusalKind};

    /// Every outcome and error crosses the wire and comes back as what the forwarder needs.
    #[test]
    fn outcomes_round_trip() {
        let kinds = [
            RefusalKind::Invalid,
            RefusalKind::NotFound,
            RefusalKind::AlreadyExists,
            RefusalKind::PermissionDenied,
            RefusalKind::AlreadyUsed,
            RefusalKind::Expired,
        ];
        for kind in kinds {
            let refused = Ok(Outcome::Refused(StateRefusal::new(kind, "no")));
            let back = outcome_from_wire(outcome_to_wire(refused.clone()));
            assert_eq!(format!("{back:?}"), format!("{refused:?}"), "{kind:?}");
        }
        let cases: Vec<(Result<Outcome, ProposeError>, &str)> = vec![
            (Ok(Outcome::Applied), "Ok(Applied)"),
            (
                Ok(Outcome::SessionOpened { session_id: 7 }),
                "Ok(SessionOpened { session_id: 7 })",
            ),
            (
                Err(ProposeError::NotLeader { leader: 3 }),
                "Err(NotLeader { leader: 3 })",
            ),
            (Err(ProposeError::NoLeader), "Err(NotLeader { leader: 0 })"),
            (
                Err(ProposeError::Busy),
                "Err(Leader(\"the consensus queue is full; try again\"))",
            ),
        ];
        for (result, expected) in cases {
            assert_eq!(
                format!("{:?}", outcome_from_wire(outcome_to_wire(result))),
                expected
            );
        }
    }
}
