//! More unit tests of the tree feature (grants on the processes of the
//! tree, PS, STACKS), written to catch mutants cargo-mutants found the
//! other tests missed; they use the fakes of [`super`].

use super::*;

#[test]
fn client_sends_grants_and_revokes_of_the_tree_and_reports_refusals() {
    let (fake, server) = scripted(&[
        Some(b"ERROR: PID 5000 is not running\n"),
        Some(b"ERROR: REVOKE refused\n"),
        Some(b"READY\n"),
        Some(b"READY\n"),
    ]);
    let client = fake.client();
    let results = within(move || {
        [
            client.grant(GrantRequest::new(pid(9)).process(pid(5000)).force(true)),
            client.revoke_grant(RevokeRequest::new().client(pid(9)).process(pid(5000))),
            client.grant(GrantRequest::new(pid(9)).process(pid(5000))),
            client.revoke_grant(RevokeRequest::new().process(pid(5000))),
        ]
    });
    let [grant, revoke, granted, revoked] = results;
    let err = grant.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "PID 5000 is not running");
    let err = revoke.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert_eq!(err.message(), "REVOKE refused");
    granted.unwrap();
    revoked.unwrap();
    assert_eq!(
        server.join().unwrap(),
        [
            "GRANT_ACCESS 9 TARGET 5000 FORCE\n",
            "REVOKE 9 TARGET 5000\n",
            "GRANT_ACCESS 9 TARGET 5000\n",
            "REVOKE TARGET 5000\n",
        ]
    );
}
