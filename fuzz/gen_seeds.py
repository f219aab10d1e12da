#!/usr/bin/env python3
"""Writes the hand-made seed corpus (corpus/<target>/seed-*). Re-run after
changing it; fuzzing adds further files (named by their SHA-1)."""
import json, os, re, pathlib

here = pathlib.Path(__file__).resolve().parent
root = here.parent
corpus = here / "corpus"

def put(target, name, data):
    d = corpus / target
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (d / f"seed-{name}").write_bytes(data)

# --- OVP frames: the 27 reference frames (PROTOCOLS.md section 3).
frames = json.load(open(root / "shared/tests/vectors/ovp-frames.json"))["frames"]
for n, f in enumerate(frames):
    b = bytes.fromhex(f["hex"])
    put("ovp_validate", f"frame{n:02}-{f['kind']}-{f['callsign'].replace('/', '_')}", b)
    put("station_reassembly", f"payload{n:02}-{f['kind']}", b[12:])
# Whole multi-frame messages as one stream of payloads, per callsign.
streams = {}
for f in frames:
    streams.setdefault(f["callsign"], b"")
    streams[f["callsign"]] += bytes.fromhex(f["hex"])[12:]
for cs, s in streams.items():
    put("station_reassembly", f"stream-{cs.replace('/', '_')}", s)
tok = bytes([0xBB, 0xAA, 0xDD])
put("ovp_validate", "short11", bytes(11))
put("ovp_validate", "header-only-W1AW", bytes.fromhex("0000001680b7") + tok + bytes(3))
put("ovp_validate", "max-id", bytes.fromhex("ffffffffffff") + tok + b"\x01\x02\x03")
put("ovp_validate", "zero-digit", bytes.fromhex("000000000028") + tok + bytes(3))
put("ovp_validate", "bad-token", bytes.fromhex("0000001680b7") + b"\xbb\xaa\x00" + bytes(3))
put("ovp_validate", "http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
# Messages to send (first byte: flags; 0xE0.. = repeat to ~64 KiB).
put("station_reassembly", "send-text", b"\x01hello everyone")
put("station_reassembly", "send-utf8", "\x02VE3XYZ here, roger. 73 de \u00e9\u00e8 \u2603".encode())
put("station_reassembly", "send-ptt", b"\x03PTT_START")
put("station_reassembly", "send-zeros", b"\x04" + bytes(300))
put("station_reassembly", "send-big-text", b"\xf4" + b"long text ")
put("station_reassembly", "send-big-max", b"\xff" + b"x")

# --- Control lines: every command and reply of PROTOCOLS.md section 1.
proto = (root / "docs/PROTOCOLS.md").read_text()
sec1 = proto.split("## 1.")[1].split("## 2.")[0]
lines = set()
for cell in re.findall(r"`([^`]+)`", sec1):
    if re.match(r"^[A-Z_]+( |$)", cell):
        lines.add(cell)
concrete = {
    "<session_token>": "3f2a9c0d1e", "<user_id>": "42", "<caller_id>": "7",
    "<callee_id>": "8", "<partner_id>": "9", "<recipient_id>": "2",
    "<content>": "hi there", "<username>": "alice", "<caller_username>": "bob",
    "<partner_username>": "carol", "[status]": "away", "<word>": "PING",
    "<json>": '{"sender_id":1,"recipient_id":2,"content":"hi","timestamp":"2026-11-21T10:00:00Z"}',
}
out = set()
for l in lines:
    for k, v in concrete.items():
        l = l.replace(k, v)
    out.add(l)
out |= {"HEARTBEAT", "HEARTBEAT online", "HEARTBEAT busy", "HANGUP", "CALL 1\r\n",
        "MSG 2 hi there  ", "AUTH abc123\n", "CALL 9223372036854775807", "CALL 0",
        "OK AUTH 1 alice", "INCOMING 1 alice", "START_CALL 2 bob", "REJECTED 2",
        "HANGUP 1", "OK HANGUP", "OK MSG", "OK REJECTED", "OK CALLING 2",
        "ERROR Unknown command: PING", "ERROR Not authenticated", "ERROR Invalid token",
        "ERROR Rate limit exceeded", "ERROR Line too long", "ERROR Invalid UTF-8"}
for n, l in enumerate(sorted(out)):
    put("line_parser", f"{n:02}", l)

# --- Command channel messages (shared/src/channel.rs tests and types).
msgs = [
    {"type": "hello", "version": 1, "role": "control", "agent": "whelm-control 0.1.0 pid 1234"},
    {"type": "hello", "version": 1, "role": "operator", "agent": "ctl"},
    {"type": "request", "id": 7, "command": {"op": "allow_user", "user": 1, "ip": "127.0.0.2"}},
    {"type": "request", "id": 8, "command": {"op": "allow_user", "user": 2, "ip": "::1", "token": "t0k", "voice": "[::1]:5000"}},
    {"type": "request", "id": 3, "command": {"op": "install_call", "a": 1, "b": 2}},
    {"type": "request", "id": 4, "command": {"op": "remove_call", "a": 1, "b": 2}},
    {"type": "request", "id": 5, "command": {"op": "revoke_user", "user": 9223372036854775807}},
    {"type": "request", "id": 6, "command": {"op": "set_limits", "bandwidth_mbps": 100, "station_rate": 25}},
    {"type": "request", "id": 9, "command": {"op": "snapshot"}},
    {"type": "request", "id": 10, "command": {"op": "counters"}},
    {"type": "request", "id": 11, "command": {"op": "stations"}},
    {"type": "request", "id": 12, "command": {"op": "replace_all", "users": [{"user": 1, "ip": "10.0.0.1", "voice": "10.0.0.1:40000"}], "calls": [{"a": 1, "b": 2}]}},
    {"type": "welcome", "version": 1, "agent": "whelm-relay 0.1.0 pid 99"},
    {"type": "refused", "reason": "version 2 != 1"},
    {"type": "reply", "id": 3, "outcome": {"result": "ok"}},
    {"type": "reply", "id": 4, "outcome": {"result": "error", "code": "busy", "message": "user 2 is in a call"}},
    {"type": "reply", "id": 9, "outcome": {"result": "snapshot", "users": [{"user": 3, "ip": "192.0.2.1"}], "calls": []}},
    {"type": "reply", "id": 11, "outcome": {"result": "stations", "stations": [{"callsign": "W1AW", "addr": "192.0.2.7:57372", "last_seen_secs": 3, "frames": 250}]}},
    {"type": "reply", "id": 10, "outcome": {"result": "counters", "workers": [{"worker": 0, "cpu": 1, "engine": "uring", "packets_in": 10, "packets_out": 9, "bytes_in": 1340, "bytes_out": 1206, "drops": {"bad_token": 1}}], "bps_in": 1000, "bps_out": 900, "bps_limit": 100000000, "calls": 1, "stations": 2}},
    {"type": "event", "event": "voice_registered", "user": 2, "addr": "[::1]:5000"},
    {"type": "event", "event": "station_seen", "callsign": "KB5MU-11", "addr": "198.51.100.2:40000"},
    {"type": "event", "event": "station_timed_out", "callsign": "W5NYV.NCS"},
    {"type": "event", "event": "counters", "workers": [], "bps_in": 0, "bps_out": 0, "bps_limit": 0, "calls": 0, "stations": 0},
]
for n, m in enumerate(msgs):
    put("channel_decoder", f"{n:02}-{m['type']}", json.dumps(m, separators=(",", ":")) + "\n")
put("channel_decoder", "lines", b"ab\ncd\ne\n0123456789\nmore of the long line\nok\n")
put("channel_decoder", "not-json", b"not json\n")

# --- Config files.
relay_examples = {
    "relay-test": 'port = 1234\nreply_to = "source"\ndeny = ["K0K"]\nworkers = 1\n',
    "relay-full": '''port = 57372
voice_port = 5001
bind = "::"
timeout = 3600
verbose = false
reply_to = "listen-port"
engine = "auto"
cores = "0-1"
control_socket = "/run/whelm/relay.sock"
control_uids = [0]
control_gids = [0]
bandwidth_mbps = 100
station_rate = 100
station_burst = 150
allow = ["W1AW", "kb5mu-11", " W5NYV.NCS "]
deny = ["K0K"]
stats_interval = 60
ring_entries = 1024
buffers = 4096
send_slots = 4096
batch = 64
''',
    "relay-short": 'timeout = 2\nallow_short_timeout = true\nengine = "mmsg"\nworkers = 2\n',
    "control-test": 'listen = "127.0.0.1:6000"\nring_timeout = 5\nmax_calls = 3\n',
    "control-full": '''listen = "0.0.0.0:5000"
db = "whelm.db"
relay_socket = "/run/whelm/relay.sock"
heartbeat_timeout = 30.0
heartbeat_check = 10.0
ring_timeout = 60.0
auth_timeout = 10.0
max_calls = 400
max_connections = 20000
max_conns_per_ip = 256
rate_limit = 1000.0
rate_burst = 2000.0
batch_max = 512
max_outbuf = 1048576
''',
    "control-mysql": 'db = "user:password@tcp(host:3306)/whelm?parseTime=true"\nlisten = "[::1]:5000"\n',
    "control-mysql-url": 'db = "mysql://u:p%40ss@db.example:3307/whelm"\nheartbeat_timeout = 0.5\n',
}
for name, text in relay_examples.items():
    put("config_parser", name, text)
for name in ["relay.toml", "control.toml"]:
    p = root / "config" / name
    if p.exists():
        put("config_parser", "example-" + name, p.read_bytes())
