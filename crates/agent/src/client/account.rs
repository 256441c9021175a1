//! One-shot requests of a logged-in (or logging-in) user: login, the hosts it may reach, who
//! it is, logout. Each is one stream on a pooled connection to any broker.

use super::{request, CLOSE_GRACE};
use crate::dial::{closed, Dialer};
use crate::pool::Opened;
use crate::{ClientConfig, Error};
use ferry_proto::wire::{self, client_request, client_response, Role};

/// Opens a stream on `conn`, for the one-shot requests of `login`.
async fn open_on(conn: &quinn::Connection) -> Result<Opened, Error> {
    let (send, recv) = conn.open_bi().await.map_err(|e| closed(conn, &e))?;
    Ok(Opened {
        send,
        recv,
        conn: conn.clone(),
    })
}

/// A connection of its own to any broker, for requests answered at once.
struct OneShot {
    dialer: Dialer,
    conn: quinn::Connection,
}

impl OneShot {
    async fn connect(config: &ClientConfig) -> Result<Self, Error> {
        let dialer = Dialer::new(config, Role::Client)?;
        let conn = dialer.connect().await?.conn;
        Ok(Self { dialer, conn })
    }

    /// Sends one request on a new stream and returns the answer.
    async fn ask(
        &self,
        request_: client_request::Request,
    ) -> Result<client_response::Response, Error> {
        let (_, _, response) = request(open_on(&self.conn).await?, request_).await?;
        Ok(response)
    }

    /// Closes the connection, waiting (briefly) until the broker knows.
    async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        let _ = tokio::time::timeout(CLOSE_GRACE, self.dialer.endpoint().wait_idle()).await;
    }
}

/// Sends one request on a connection of its own and returns the answer.
async fn ask(
    config: &ClientConfig,
    request_: client_request::Request,
) -> Result<client_response::Response, Error> {
    let one_shot = OneShot::connect(config).await?;
    let answer = one_shot.ask(request_).await;
    one_shot.close().await;
    answer
}

fn unexpected(what: &str) -> Error {
    Error::Protocol(format!("broker answered {what} with something else"))
}

/// Logs `user` in and returns the token and its expiry.
pub async fn login(
    config: &ClientConfig,
    user: &str,
    password: &str,
) -> Result<wire::LoginOk, Error> {
    let login = client_request::Request::Login(wire::Login {
        user: user.to_owned(),
        password: password.to_owned(),
    });
    match ask(config, login).await? {
        client_response::Response::LoginOk(ok) => Ok(ok),
        _ => Err(unexpected("a login")),
    }
}

/// Every host (with its services, and where it is attached) the token's user may reach,
/// gathered page by page; and the node that answered the last page.
pub async fn list_hosts(
    config: &ClientConfig,
    token: &str,
) -> Result<(Vec<wire::HostEntry>, String), Error> {
    let one_shot = OneShot::connect(config).await?;
    let listed = list_pages(&one_shot, token).await;
    one_shot.close().await;
    listed
}

async fn list_pages(
    one_shot: &OneShot,
    token: &str,
) -> Result<(Vec<wire::HostEntry>, String), Error> {
    let mut hosts = Vec::new();
    let mut after = String::new();
    for _ in 0..LIST_PAGES_MAX {
        let list = client_request::Request::ListHosts(wire::ListHosts {
            token: token.to_owned(),
            after: after.clone(),
        });
        let page = match one_shot.ask(list).await? {
            client_response::Response::HostList(page) => page,
            _ => return Err(unexpected("a host listing")),
        };
        hosts.extend(page.hosts);
        // Names only grow from page to page; anything else would loop.
        if page.next_after.is_empty() || page.next_after <= after {
            return Ok((hosts, page.answered_by));
        }
        after = page.next_after;
    }
    Err(Error::Protocol(format!(
        "the host listing did not end within {LIST_PAGES_MAX} pages"
    )))
}

/// Pages of a host listing read at most (a page holds hundreds of hosts).
const LIST_PAGES_MAX: usize = 10_000;

/// Who the token belongs to, its groups, and its expiry.
pub async fn who_am_i(config: &ClientConfig, token: &str) -> Result<wire::Identity, Error> {
    let who = client_request::Request::WhoAmI(wire::WhoAmI {
        token: token.to_owned(),
    });
    match ask(config, who).await? {
        client_response::Response::Identity(identity) => Ok(identity),
        _ => Err(unexpected("whoami")),
    }
}

/// Revokes the token on every broker; false when it was no longer valid.
pub async fn logout(config: &ClientConfig, token: &str) -> Result<bool, Error> {
    let logout = client_request::Request::Logout(wire::Logout {
        token: token.to_owned(),
    });
    match ask(config, logout).await? {
        client_response::Response::LoggedOut(done) => Ok(done.revoked),
        _ => Err(unexpected("a logout")),
    }
}

/// Changes the token holder's own password; the current one must verify.
pub async fn change_password(
    config: &ClientConfig,
    token: &str,
    current_password: &str,
    new_password: &str,
) -> Result<(), Error> {
    let change = client_request::Request::ChangePassword(wire::ChangePassword {
        token: token.to_owned(),
        current_password: current_password.to_owned(),
        new_password: new_password.to_owned(),
    });
    match ask(config, change).await? {
        client_response::Response::PasswordChanged(_) => Ok(()),
        _ => Err(unexpected("a password change")),
    }
}
