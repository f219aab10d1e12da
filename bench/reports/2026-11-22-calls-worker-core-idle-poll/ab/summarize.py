import json,glob,statistics as st,sys
base=sys.argv[1] if len(sys.argv)>1 else 'ab'
rows={}
for mode in ['default','poll']:
    for f in glob.glob(f'{base}/{mode}-*/runs.jsonl'):
        for l in open(f):
            r=json.loads(l)
            k=(r['offered_rate'],r['target'],mode)
            rows.setdefault(k,[]).append(r)
print(f"{'load':>7} {'target':12} {'mode':8} {'n':>2} {'p50us':>7} {'p99us':>8} {'p99 min..max':>18} {'cpu ns/f':>9} {'loss%':>7}")
for k in sorted(rows):
    rs=[r for r in rows[k] if r['valid']]
    if not rs: print(k,'no valid'); continue
    p50=st.median(r['latency_ns']['p50'] for r in rs)/1e3
    p99s=[r['latency_ns']['p99']/1e3 for r in rs]
    cpu=st.median(r['cpu_ns_per_forwarded'] for r in rs)
    loss=st.median(r['loss_ratio'] for r in rs)*100
    print(f"{int(k[0]):>7} {k[1]:12} {k[2]:8} {len(rs):>2} {p50:7.1f} {st.median(p99s):8.1f} {min(p99s):8.1f}..{max(p99s):8.1f} {cpu:9.0f} {loss:7.3f}")
