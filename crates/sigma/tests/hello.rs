//! `&hello`, the worked example of docs/architecture.md: a destination
//! added as one module plus one registry line is routed to end to end
//! (T → H → A → router → destination). Needs `test-destinations`.

mod common;

use common::*;

#[test]
fn a_route_to_hello_answers_hello() {
    let s = Server::start("[[route]]\npath = \"/hi\"\nto = \"&hello\"\nauth = \"none\"\n");
    let mut c = s.connect();
    c.send(b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "hello\n");
}
