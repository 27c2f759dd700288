//! Credentials against a real fabric server on loopback: a credential authenticates with its
//! role and name, which the handler sees; a wrong secret or another name is refused; and a
//! capability must be signed by the managers' key, not by anything a compute host holds.

use std::sync::Arc;
use std::time::Duration;

use lego_fabric::*;

/// Answers with the peer's role and name, `role name`.
struct WhoAmI;

impl Handler for WhoAmI {
    fn handle(&self, ctx: &RequestContext, _req: Request) -> Result<Vec<u8>, RemoteError> {
        Ok(format!("{} {} {:?}", ctx.role, ctx.name, ctx.rights).into_bytes())
    }
}

fn key() -> ClusterKey {
    ClusterKey::from_bytes([0x21; 32])
}

fn serve(config: ServerConfig) -> ServerHandle {
    Server::bind("127.0.0.1:0", key(), Arc::new(WhoAmI), config)
        .expect("bind")
        .spawn()
}

fn config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    }
}

fn who(c: &Client, vnode: u64) -> Result<String, ClientError> {
    c.call(Request::new(0x0100, vnode, Vec::new()))
        .map(|r| String::from_utf8(r.payload).expect("utf-8"))
}

#[test]
fn the_handler_sees_each_peers_role_and_name() {
    let server = serve(ServerConfig::default());
    let addr = server.local_addr();
    let compute = key()
        .issue_credential(Role::Compute, "host-a")
        .expect("issue");
    let c = Client::connect(addr, compute, config()).expect("a credential connects");
    assert_eq!(who(&c, 0).expect("call"), "compute host-a Rights(0x0)");
    let op = key()
        .issue_credential(Role::Operator, "ops")
        .expect("issue");
    let c = Client::connect(addr, op, config()).expect("an operator connects");
    assert_eq!(who(&c, 0).expect("call"), "operator ops Rights(0x0)");
    let c = Client::connect(addr, key(), config()).expect("the cluster key connects");
    assert_eq!(who(&c, 0).expect("call"), "cluster  Rights(0x0)");
}

#[test]
fn a_wrong_secret_or_a_borrowed_name_is_refused() {
    let server = serve(ServerConfig::default());
    let addr = server.local_addr();
    let foreign = ClusterKey::from_bytes([0x22; 32])
        .issue_credential(Role::Compute, "host-a")
        .expect("issue");
    let Err(e) = Client::connect(addr, foreign, config()) else {
        panic!("another cluster's credential")
    };
    assert!(matches!(e, ClientError::Auth(_)), "{e:?}");
    let mine = key()
        .issue_credential(Role::Compute, "host-a")
        .expect("issue");
    let borrowed = mine.to_text().replace("name host-a", "name host-b");
    let borrowed = Credential::from_text(&borrowed).expect("parses");
    let Err(e) = Client::connect(addr, borrowed, config()) else {
        panic!("host-a's secret as host-b")
    };
    assert!(matches!(e, ClientError::Auth(_)), "{e:?}");
    let promoted = mine.to_text().replace("role compute", "role operator");
    let promoted = Credential::from_text(&promoted).expect("parses");
    let Err(e) = Client::connect(addr, promoted, config()) else {
        panic!("a compute secret as operator")
    };
    assert!(matches!(e, ClientError::Auth(_)), "{e:?}");
}

#[test]
fn capabilities_are_verified_with_the_configured_public_key() {
    let managers = CapabilityKey::generate().expect("key");
    let server = serve(ServerConfig {
        capability_key: Some(managers.public()),
        ..ServerConfig::default()
    });
    let compute = key()
        .issue_credential(Role::Compute, "host-a")
        .expect("issue");
    let c = Client::connect(server.local_addr(), compute, config()).expect("connect");
    let ttl = Duration::from_secs(60);
    // A key a compute host made, and the key derived from the cluster key (which the server
    // was told not to trust): both refused.
    for wrong in [
        CapabilityKey::generate().expect("key"),
        CapabilityKey::derive(&key()),
    ] {
        let cap = Capability::issue(&wrong, 7, Rights::MEMORY, ttl);
        let e = c.attach(&cap).expect_err("a foreign signature");
        assert!(
            matches!(&e, ClientError::Remote(r) if r.code == ErrorCode::Forbidden),
            "{e:?}"
        );
    }
    c.attach(&Capability::issue(&managers, 7, Rights::MEMORY, ttl))
        .expect("the managers' signature");
    assert_eq!(who(&c, 7).expect("call"), "compute host-a Rights(MEMORY)");
}
