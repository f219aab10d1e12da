//! Stations chatting through the real relay, as the README walkthrough
//! does it: two stations, a PTT burst, a third station joining; in
//! `--reply-to source` mode (any port) and in `--reply-to listen-port` mode
//! (stations bound to the relay's port on their own loopback address).

#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

mod support;

use support::{relay_bin, start_relay, start_station};

fn walkthrough(engine: &str, reply_to: &str) {
    let Some(bin) = relay_bin() else {
        panic!("whelm-relay is not built next to whelm-bench: run `cargo build -p whelm-relay`");
    };
    let (_relay, port) = start_relay(&bin, engine, reply_to);
    let server = format!("127.0.0.1:{port}");
    let bind = |n: u8| match reply_to {
        "listen-port" => format!("127.0.0.{n}:{port}"),
        _ => "127.0.0.1:0".to_string(),
    };
    let mut a = start_station("W1AW", &server, &bind(2));
    let mut b = start_station("KB5MU-11", &server, &bind(3));
    // The relay forwards to stations it has heard: both say something first.
    a.say("W1AW on frequency");
    std::thread::sleep(std::time::Duration::from_millis(100));
    b.say("KB5MU-11 here");
    assert_eq!(a.next_out(5), "[KB5MU-11]: KB5MU-11 here");
    a.say("hello everyone");
    assert_eq!(b.next_out(5), "[W1AW]: hello everyone");
    let long = "VE3XYZ here, roger. ".repeat(12);
    b.say(long.trim_end());
    assert_eq!(a.next_out(5), format!("[KB5MU-11]: {}", long.trim_end()));

    a.say("/ptt 5");
    assert_eq!(b.next_out(5), "[W1AW] * PTT_START");
    assert_eq!(b.next_out(5), "[W1AW] * voice: 5 frames");
    assert_eq!(b.next_out(5), "[W1AW] * PTT_STOP");

    let mut c = start_station("VE3XYZ", &server, &bind(4));
    c.say("VE3XYZ joining");
    assert_eq!(a.next_out(5), "[VE3XYZ]: VE3XYZ joining");
    assert_eq!(b.next_out(5), "[VE3XYZ]: VE3XYZ joining");
    a.say("welcome VE3XYZ");
    assert_eq!(b.next_out(5), "[W1AW]: welcome VE3XYZ");
    assert_eq!(c.next_out(5), "[W1AW]: welcome VE3XYZ");
    // Nobody hears itself.
    assert!(a.drain_out(200).is_empty());
    a.finish(10);
    b.finish(10);
    c.finish(10);
}

#[test]
fn chat_through_relay_mmsg_reply_to_source() {
    walkthrough("mmsg", "source");
}

#[test]
fn chat_through_relay_uring_reply_to_source() {
    walkthrough("uring", "source");
}

#[test]
fn chat_through_relay_listen_port_mode() {
    walkthrough("mmsg", "listen-port");
}
