#!/usr/bin/env python3
"""The CLI as users run it against plain SO_REUSEPORT servers, interleaved.

Each round starts every server in turn on loopback, warms it up for 1s
with wrk, then measures wrk -t1 -cC -dD with 'Connection: close' (one TCP
connection per request): requests/s, server CPU per connection (utime +
stime of every server process from /proc, the master's share apart), and
with PERF=1 context switches and syscalls per connection (perf stat -p on
every server process, attached after the warm-up; run it apart from the
timing runs, since the tracepoint slows the servers). It prints each
round and then each server's ratios to the last server, min-max and
median over the rounds.

    go build -C ../../.. -o /tmp/handoff ./cmd/handoff
    go build -C .. -o /tmp/handoff-bench .
    S='[["cli",{"bin":"/tmp/handoff"}],["reuseport",{"gomaxprocs":1}],["reuseport",{}]]' \
        R=5 D=4s C=32 python3 clicompare.py
    PERF=1 R=2 python3 clicompare.py

"cli" is the handoff CLI with its demo, --workers 2 and any "args";
"reuseport" is two processes of handoff-bench -role=reuseport (http.Serve
on an SO_REUSEPORT listener), at Go's default GOMAXPROCS or the one given.
"""
import subprocess, time, os, re, sys, signal, json, glob, tempfile
CLK = os.sysconf('SC_CLK_TCK')
def cpu(pids):
    t = 0
    for p in pids:
        try:
            f = open(f'/proc/{p}/stat').read().rsplit(')',1)[1].split()
            t += int(f[11]) + int(f[12])
        except Exception: pass
    return t / CLK
def children(pid):
    out=[]
    for f in glob.glob(f'/proc/{pid}/task/*/children'):
        try: out+= [int(x) for x in open(f).read().split()]
        except Exception: pass
    return out
def wait_http(port):
    for _ in range(100):
        if subprocess.run(['curl','-s','-o','/dev/null',f'http://127.0.0.1:{port}/'],capture_output=True).returncode==0: return
        time.sleep(0.1)
    raise SystemExit('not serving')
def wrk(port, conns, dur, close=True):
    args=['wrk','-t1',f'-c{conns}',f'-d{dur}']
    if close: args+=['-H','Connection: close']
    out=subprocess.run(args+[f'http://127.0.0.1:{port}/'],capture_output=True,text=True).stdout
    n=int(re.search(r'(\d+) requests in',out).group(1)); return n, out
def start(kind, port, extra):
    procs=[]
    if kind=='cli':
        bin_=extra.get('bin','/tmp/handoff')
        p=subprocess.Popen([bin_,'--listen',f'127.0.0.1:{port}','--workers','2','--log-format','json']+extra.get('args',[]),stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
        wait_http(port); time.sleep(0.5)
        return [p], lambda: [p.pid]+children(p.pid), [p.pid]
    if kind=='reuseport':
        d=tempfile.mkdtemp()
        env=dict(os.environ); env.pop('GOMAXPROCS',None)
        if extra.get('gomaxprocs'): env['GOMAXPROCS']=str(extra['gomaxprocs'])
        ps=[subprocess.Popen([os.environ.get('BENCH','/tmp/handoff-bench'),'-role=reuseport',f'-port={port}',f'-stats-dir={d}'],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL) for _ in range(2)]
        wait_http(port); time.sleep(0.5)
        return ps, lambda: [p.pid for p in ps], []
def stop(ps):
    for p in ps: p.send_signal(signal.SIGTERM)
    for p in ps:
        try: p.wait(10)
        except Exception: p.kill()
def main():
    conns=int(os.environ.get('C','32')); dur=os.environ.get('D','4s'); rounds=int(os.environ.get('R','3'))
    perf=os.environ.get('PERF')=='1'
    servers=json.loads(os.environ.get('S','[["cli",{}],["reuseport",{}]]'))
    res={i:[] for i in range(len(servers))}
    for r in range(rounds):
        for i,(kind,extra) in enumerate(servers):
            port=19000+i
            ps,pidsf,master=start(kind,port,extra)
            wrk(port,conns,'1s')  # warm-up
            pids=pidsf()
            c0=cpu(pids); cm0=cpu(master)
            if perf:
                pf=subprocess.Popen(['perf','stat','-x,','-e','context-switches,raw_syscalls:sys_enter','-p',','.join(map(str,pids))],stderr=subprocess.PIPE,text=True)
                time.sleep(0.2)
            t0=time.time(); n,out=wrk(port,conns,dur); el=time.time()-t0
            c1=cpu(pids); cm1=cpu(master)
            row={'rps':n/el,'cpu_us':(c1-c0)/n*1e6,'master_share':((cm1-cm0)/(c1-c0) if master else 0)}
            if perf:
                pf.send_signal(signal.SIGINT); _,err=pf.communicate()
                for line in err.splitlines():
                    f=line.split(',')
                    if len(f)>3 and f[0].strip().isdigit():
                        row[f[2]]=int(f[0])/n
            res[i].append(row); stop(ps)
            print(r,kind,json.dumps(extra),{k:round(v,3) for k,v in row.items()},flush=True)
    base=res[len(servers)-1]
    for i,(kind,extra) in enumerate(servers):
        rat=[a['rps']/b['rps'] for a,b in zip(res[i],base)]
        crat=[a['cpu_us']/b['cpu_us'] for a,b in zip(res[i],base)]
        line=f"{kind} {json.dumps(extra)}: rps ratio {min(rat):.2f}-{max(rat):.2f} (median {sorted(rat)[len(rat)//2]:.2f}), cpu/conn ratio {min(crat):.2f}-{max(crat):.2f} (median {sorted(crat)[len(crat)//2]:.2f})"
        if perf:
            for k in ('context-switches','raw_syscalls:sys_enter'):
                vs=[x.get(k,0) for x in res[i]]; line+=f", {k}/conn {min(vs):.2f}-{max(vs):.2f}"
        if res[i][0]['master_share']: line+=f", master share {min(x['master_share'] for x in res[i]):.2f}-{max(x['master_share'] for x in res[i]):.2f}"
        print(line)
main()
