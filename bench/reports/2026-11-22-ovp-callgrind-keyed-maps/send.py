import socket, sys, time
port = int(sys.argv[1]); n_st = 10; rate = 50; secs = 8
def enc(cs):
    d = {c: i+1 for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZ")}
    d.update({c: 27+i for i, c in enumerate("0123456789")}); d.update({'-':37,'/':38,'.':39})
    v = sum(d[c] * 40**i for i, c in enumerate(cs))
    return v.to_bytes(6, 'big') + bytes([0xBB,0xAA,0xDD,0,0,0])
socks = []
for i in range(n_st):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.setblocking(False)
    socks.append((s, enc("S%d" % i) + bytes(122)))
sent = 0; t0 = time.time()
for k in range(rate * secs):
    for s, f in socks:
        s.sendto(f, ("127.0.0.1", port)); sent += 1
        for _ in range(20):
            try: s.recv(2048)
            except BlockingIOError: break
    nxt = t0 + (k + 1) / rate
    d = nxt - time.time()
    if d > 0: time.sleep(d)
print("sent", sent)
