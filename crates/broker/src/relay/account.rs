//! A logged-in user's questions about their own account, answered from the applied state:
//! which hosts and services they may reach (`ferry ls`), who the token belongs to (`ferry
//! whoami`), and withdrawing the token on every broker (`ferry logout`).
//!
//! Each request carries the token; its holder is the authority. Reads follow the same
//! freshness rule as opening a session (`Proposer::confirm_fresh`): a node out of touch with the
//! leader answers only after a read index. A token that is unknown proposes nothing, so an
//! anonymous peer cannot grow the replicated state through these requests.

use super::{frame_limits, propose_error_to_wire, refusal_to_wire, stale};
use crate::context::Ctx;
use ferry_proto::state::{self as cmd, command::Kind};
use ferry_proto::wire::{self, ErrorCode};
use ferry_state::{hash_secret, Outcome, TokenCheck};
use prost::Message;
use std::net::SocketAddr;

/// Room kept in a page for the rest of the response around the host entries.
const PAGE_MARGIN_BYTES: usize = 1024;

/// The user a valid token belongs to (a copy: the state moves on).
async fn user_of(ctx: &Ctx, token: &str) -> Result<ferry_state::User, wire::Error> {
    ctx.proposer.confirm_fresh().await.map_err(stale)?;
    let state = ctx.replica.read();
    match state.check_token(&hash_secret(token), crate::now_ms()) {
        TokenCheck::Valid(user) if user.disabled => Err(wire::Error::new(
            ErrorCode::PermissionDenied,
            format!("user {:?} is disabled", user.name),
        )),
        TokenCheck::Valid(user) => Ok(user.clone()),
        TokenCheck::Expired => Err(wire::Error::new(
            ErrorCode::Expired,
            "your login token has expired; run `ferry login` again",
        )),
        TokenCheck::Unknown => Err(wire::Error::new(
            ErrorCode::Unauthenticated,
            "your login token is not valid on this cluster (logged out, or never issued here); \
             run `ferry login` again",
        )),
    }
}

/// One page of the hosts the token's user may reach, after `list.after`.
pub(super) async fn list_hosts(
    ctx: &Ctx,
    list: wire::ListHosts,
) -> Result<wire::HostList, wire::Error> {
    let user = user_of(ctx, &list.token).await?;
    // The client reads responses with the default frame limit: stay under both.
    let page_bytes_max = frame_limits(ctx)
        .max_frame_bytes
        .min(ferry_proto::frame::DEFAULT_MAX_FRAME_BYTES)
        - PAGE_MARGIN_BYTES;
    let mut page = wire::HostList {
        answered_by: ctx.config.node_id.clone(),
        ..Default::default()
    };
    let state = ctx.replica.read();
    for host in state.reachable_hosts(&user, &list.after) {
        let entry = wire::HostEntry {
            name: host.name.clone(),
            groups: host.groups.clone(),
            services: state.reachable_services(&user, host),
            online: !host.attached_broker.is_empty(),
            broker: host.attached_broker.clone(),
        };
        if page.encoded_len() + entry.encoded_len() + 8 > page_bytes_max {
            // Names are short (bounded by validation), so a page always holds one.
            page.next_after = page
                .hosts
                .last()
                .map(|h| h.name.clone())
                .unwrap_or_default();
            break;
        }
        page.hosts.push(entry);
    }
    Ok(page)
}

/// Who the token belongs to, and until when it is valid.
pub(super) async fn who_am_i(
    ctx: &Ctx,
    request: wire::WhoAmI,
) -> Result<wire::Identity, wire::Error> {
    let user = user_of(ctx, &request.token).await?;
    let expires_at_ms = ctx
        .replica
        .read()
        .token(&hash_secret(&request.token))
        .map(|t| t.expires_at_ms)
        .unwrap_or_default();
    Ok(wire::Identity {
        user: user.name,
        groups: user.groups,
        expires_at_ms,
        answered_by: ctx.config.node_id.clone(),
    })
}

/// Withdraws the token on every node (a replicated `RevokeToken`), or says it was no longer
/// valid. Only a token that exists is proposed for revocation; whether it exists is read after
/// a read index, so that a lagging node never answers "not valid" for a token issued through
/// another node a moment ago (the user would believe it revoked).
pub(super) async fn logout(
    ctx: &Ctx,
    request: wire::Logout,
    remote: SocketAddr,
) -> Result<wire::LoggedOut, wire::Error> {
    ctx.proposer.confirm_current().await.map_err(stale)?;
    let token_hash = hash_secret(&request.token);
    let user = match ctx.replica.read().check_token(&token_hash, crate::now_ms()) {
        TokenCheck::Valid(user) => user.name.clone(),
        TokenCheck::Expired | TokenCheck::Unknown => return Ok(wire::LoggedOut { revoked: false }),
    };
    let revoke = Kind::RevokeToken(cmd::RevokeToken { token_hash });
    match ctx
        .proposer
        .propose(format!("user:{user}"), remote.to_string(), revoke)
        .await
    {
        Ok(Outcome::Refused(r)) if r.kind == ferry_state::RefusalKind::NotFound => {
            Ok(wire::LoggedOut { revoked: false })
        }
        Ok(Outcome::Refused(r)) => Err(refusal_to_wire(&r)),
        Ok(_) => {
            tracing::info!(%user, %remote, "logged out: token revoked");
            Ok(wire::LoggedOut { revoked: true })
        }
        Err(e) => Err(propose_error_to_wire(&e)),
    }
}

/// Changes the token holder's own password (`ferry passwd`). The current password must verify,
/// like a login, under the same throttle (a stolen token alone does not change the password);
/// the new one is hashed here and replicated. Tokens already issued stay valid.
pub(super) async fn change_password(
    ctx: &std::sync::Arc<Ctx>,
    request: wire::ChangePassword,
    remote: SocketAddr,
) -> Result<wire::PasswordChanged, wire::Error> {
    let user = user_of(ctx, &request.token).await?;
    let source = remote.ip();
    if let Some(problem) = crate::auth::new_password_problem(&request.new_password) {
        return Err(wire::Error::new(ErrorCode::InvalidArgument, problem));
    }
    // The current password is checked like a login's, under the same limits.
    crate::admission::reserve_login(ctx, &user.name, source).await?;
    let (stored, current, new) = (
        user.password_hash.clone(),
        request.current_password,
        request.new_password,
    );
    let hashed = ctx
        .admission
        .passwords
        .run(ctx, move || {
            crate::auth::verify_password(&stored, &current)
                .then(|| crate::auth::hash_password(&new).ok())
                .flatten()
        })
        .await?;
    let actor = format!("user:{}", user.name);
    let Some(password_hash) = hashed else {
        crate::admission::failed(ctx, source, ferry_admission::Attempt::Login, &user.name);
        return Err(wire::Error::new(
            ErrorCode::PermissionDenied,
            "the current password is wrong; nothing was changed",
        ));
    };
    crate::admission::login_succeeded(ctx, &user.name, source);
    let set = Kind::SetPassword(cmd::SetPassword {
        name: user.name.clone(),
        password_hash,
    });
    match ctx.proposer.propose(actor, remote.to_string(), set).await {
        Ok(Outcome::Refused(r)) => Err(refusal_to_wire(&r)),
        Ok(_) => {
            tracing::info!(user = %user.name, %remote, "password changed by its user");
            Ok(wire::PasswordChanged {})
        }
        Err(e) => Err(propose_error_to_wire(&e)),
    }
}
