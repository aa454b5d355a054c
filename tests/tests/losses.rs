//! Bytes the agent cannot read are counted, never lost silently.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    process::Command,
};

use agent_e2e::{Agent, Proc, free_port, peer, receiver::Receiver, wait_port};

/// A server whose bytes move through `recvmmsg` and `sendmmsg`, which the agent does not read:
/// each call's bytes on its traced TCP connection are counted (`kernel_lost_other_call`, shown
/// on exit), so a user sees why that connection has no spans.
#[test]
fn bytes_of_calls_not_read_are_counted() {
    let port = free_port();
    let server = Proc::spawn(
        Command::new("python3")
            .arg(peer("mmsg_server.py"))
            .arg(port.to_string()),
    );
    wait_port(port);
    let rx = Receiver::grpc();
    let agent = Agent::start(&rx.agent_args(server.pid()), &[]);

    let mut conn = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for message in [&b"ping"[..], b"pong!"] {
        conn.write_all(message).expect("write");
        let mut echo = vec![0; message.len()];
        conn.read_exact(&mut echo).expect("echo");
        assert_eq!(echo, message);
    }
    drop(conn);

    let (_, stderr) = agent.stop();
    let lost: u64 = stderr
        .iter()
        .find_map(|l| l.split_once("kernel_lost_other_call = "))
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no kernel_lost_other_call on exit: {stderr:#?}"));
    // Two receives and two sends; a send's end is counted once, whatever its rounds.
    assert_eq!(lost, 4, "{stderr:#?}");
}
