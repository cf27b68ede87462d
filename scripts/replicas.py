#!/usr/bin/env python3
"""N snapshop replicas on one Postgres, on loopback: the scale-out proof, or a setup to try.

    python3 scripts/replicas.py                  # the proof (3 replicas), as scripts/test.sh runs it
    python3 scripts/replicas.py --serve -n 2     # a local two-replica setup, until Ctrl-C

It starts its own throwaway PostgreSQL (Debian's postgresql-15: initdb and pg_ctl on a temp dir,
a free port), so that it can stop and start it, and N replicas of `target/debug/snapshop` (or
--bin), each with its own data directory (index snapshot, logs) and one shared image directory
(`storage.images_url`, object_store's local backend). Every replica follows the change feed.

The proof, each step printed as `ok - ...` or `not ok - ...`, and the figures it measured:
  1. 100 products written through replica A are found by a search on B and on C (p50 and max of
     the time from A's acknowledgement to the first search that finds it; must be under 2 s);
  2. the same for tag updates and deletes;
  3. concurrent updates of one product through A and B end in one state on all three;
  4. kill -9 of a replica while writes go through it and another, then a restart: it catches
     up, and every acknowledged write is in the store and found on every replica (lost must be 0);
  5. Postgres stopped for a few seconds: writes get 503 with Retry-After, searches are answered
     from memory, and every replica recovers on its own when Postgres is back (time to the
     first successful write on each);
  6. a model hot swap asked of replica A: A re-embeds the catalogue into the store, the others
     follow it (same bundle, embeddings found stored), and products written through any
     replica are found on all three with the new model.
The last line is `replicas: N passed, M failed`; the exit status is non-zero on any failure.
Only the standard library: it runs on a fresh machine with python3.
"""

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN = "sk_admin_replicas_proof_0123456789abcdef"
IMAGE = os.path.join(ROOT, "tests/fixtures/subset/images/p02430_shop_p02430_shop_0.jpg")
MERCHANT = "acme"
PROPAGATION_LIMIT_S = 2.0

passed = 0
failed = 0


def ok(name):
    global passed
    passed += 1
    print(f"ok - {name}", flush=True)


def not_ok(name, detail=""):
    global failed
    failed += 1
    print(f"not ok - {name}", flush=True)
    if detail:
        print(f"  {detail}", flush=True)


def check(name, cond, detail=""):
    (ok if cond else not_ok)(name, *([detail] if not cond else []))
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- HTTP ---------------------------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.body = body

    def json(self):
        return json.loads(self.body) if self.body else None


def request(method, url, body=None, headers=None, timeout=30):
    h = {"authorization": f"Bearer {ADMIN}"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, dict(e.headers), e.read())


def multipart(parts):
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, ctype, data, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disp}\r\nContent-Type: {ctype}\r\n\r\n".encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Replica:
    def __init__(self, name, binary, work, shared, db_url, extra_env):
        self.name = name
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = os.path.join(work, name)
        self.log_path = os.path.join(work, f"{name}.log")
        self.shared = shared
        self.db_url = db_url
        self.extra_env = extra_env
        self.proc = None

    def start(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("SNAPSHOP_")}
        env.update(
            {
                "SNAPSHOP_DATABASE_URL": self.db_url,
                "SNAPSHOP_STORAGE__IMAGES_URL": f"file://{self.shared}",
                "SNAPSHOP_FEED__REPLICA": self.name,
                "SNAPSHOP_ADMIN_KEY": ADMIN,
                "SNAPSHOP_LOG": env.get("SNAPSHOP_REPLICA_LOG", "info"),
            }
        )
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data,
             "--bundle", os.path.join(ROOT, "models/default"), "--intra-threads", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )
        log.close()

    def wait_ready(self, timeout=180):
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                r = request("GET", self.url + "/readyz", timeout=2)
                if r.status == 200:
                    return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, socket.timeout):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready after {timeout} s; see {self.log_path}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    # -- API --
    def create(self, pid, tags, title="t"):
        product = json.dumps({"id": pid, "title": title, "tags": tags}).encode()
        with open(IMAGE, "rb") as f:
            image = f.read()
        body, ctype = multipart([("product", "application/json", product, None),
                                 ("image", "image/jpeg", image, "i.jpg")])
        return request("POST", f"{self.url}/v1/merchants/{MERCHANT}/products", body,
                       {"content-type": ctype})

    def patch(self, pid, fields):
        return request("PATCH", f"{self.url}/v1/merchants/{MERCHANT}/products/{pid}",
                       json.dumps(fields).encode(), {"content-type": "application/json"})

    def delete(self, pid):
        return request("DELETE", f"{self.url}/v1/merchants/{MERCHANT}/products/{pid}")

    def get(self, pid):
        return request("GET", f"{self.url}/v1/merchants/{MERCHANT}/products/{pid}")

    def search(self, tag, k=5):
        with open(IMAGE, "rb") as f:
            image = f.read()
        return request("POST", f"{self.url}/v1/search?k={k}&rerank=false&filter={tag}", image,
                       {"content-type": "image/jpeg"})

    def found(self, tag):
        """The results of a search restricted to `tag` (None when the search failed)."""
        r = self.search(tag)
        if r.status != 200:
            return None
        return r.json()["results"]

    def ready_json(self):
        return request("GET", self.url + "/readyz").json()


def wait_until(pred, timeout, step=0.0):
    started = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            return None
        if step:
            time.sleep(step)


# ---- Postgres -----------------------------------------------------------------------------------


class Postgres:
    def __init__(self):
        self.bindir = next((d for d in ["/usr/lib/postgresql/15/bin"] +
                            sorted(glob_dirs("/usr/lib/postgresql/*/bin"))
                            if os.path.exists(os.path.join(d, "pg_ctl"))), None)
        if self.bindir is None:
            raise RuntimeError("initdb/pg_ctl not found: install postgresql-15 (scripts/setup.sh --postgres-test)")
        self.dir = tempfile.mkdtemp(prefix="snapshop-replicas-pg.", dir="/tmp")
        self.port = free_port()
        self.as_user = []
        if os.getuid() == 0:
            if subprocess.run(["id", "-u", "postgres"], capture_output=True).returncode != 0:
                # initdb and postgres refuse to run as root (as scripts/test-postgres.sh does)
                subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                                "--shell", "/usr/sbin/nologin", "postgres"], check=True)
            shutil.chown(self.dir, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args):
        subprocess.run(self.as_user + [os.path.join(self.bindir, args[0]), *args[1:]], check=True,
                       cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def init(self):
        self.run("initdb", "-D", f"{self.dir}/data", "-U", "postgres", "-A", "trust", "-E", "UTF8",
                 "--no-locale", "--no-sync")
        self.start()

    def start(self):
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/server.log", "-w", "-t", "60",
                 "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c max_connections=200", "start")

    def stop(self, mode="fast"):
        self.run("pg_ctl", "-D", f"{self.dir}/data", "-m", mode, "-w", "stop")

    def remove(self):
        try:
            if os.path.exists(f"{self.dir}/data/postmaster.pid"):
                self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def glob_dirs(pattern):
    import glob
    return glob.glob(pattern)


# ---- the proof ----------------------------------------------------------------------------------


def ms(xs):
    return f"p50 {statistics.median(xs) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms"


def propagation(writer, readers, write, seen, count, what):
    """Does `write(i)` through `writer` and measures, on each reader, the time until `seen(r, i)`."""
    times = {r.name: [] for r in readers}
    missing = []
    pool = cf.ThreadPoolExecutor(len(readers))
    for i in range(count):
        r = write(i)
        if r.status not in (200, 201, 204):
            not_ok(f"{what} {i} through {writer.name}", f"HTTP {r.status}: {r.body[:200]!r}")
            return None
        acked = time.monotonic()

        def watch(reader):
            took = wait_until(lambda: seen(reader, i), timeout=10)
            return reader.name, None if took is None else time.monotonic() - acked

        for name, took in pool.map(watch, readers):
            if took is None:
                missing.append((name, i))
            else:
                times[name].append(took)
    pool.shutdown()
    all_times = [t for ts in times.values() for t in ts]
    per = "; ".join(f"{name}: {ms(ts)}" for name, ts in times.items() if ts)
    print(f"replicas: {what} through {writer.name}, {count} writes: {per}; all: {ms(all_times)}",
          flush=True)
    check(f"every {what} through {writer.name} is seen on {', '.join(r.name for r in readers)}",
          not missing, f"never seen: {missing[:5]}")
    check(f"{what} propagation max under {PROPAGATION_LIMIT_S:.0f} s",
          all_times and max(all_times) < PROPAGATION_LIMIT_S, f"max {max(all_times or [0]):.3f} s")
    return all_times


def proof(replicas, pg, writes):
    a, b, c = replicas[:3]
    run = uuid.uuid4().hex[:6]

    # 1-2. propagation of creates, tag updates and deletes
    def has(tag):
        return lambda r, i: bool(r.found(tag(i)))

    propagation(a, [b, c], lambda i: a.create(f"c{run}-{i}", [f"run:c{run}{i}", "category:dress"]),
                has(lambda i: f"run:c{run}{i}"), writes, "create")
    updates = max(writes // 5, 5)
    propagation(a, [b, c], lambda i: a.patch(f"c{run}-{i}", {"tags": [f"run:u{run}{i}"]}),
                has(lambda i: f"run:u{run}{i}"), updates, "tag update")
    propagation(a, [b, c], lambda i: a.delete(f"c{run}-{i}"),
                lambda r, i: r.found(f"run:u{run}{i}") == [], updates, "delete")

    # 3. concurrent writes to one product through two replicas
    pid = f"x{run}"
    check("the contended product is created", a.create(pid, [f"run:x{run}"]).status == 201)
    diverged = []
    for round_ in range(10):
        barrier = threading.Barrier(2)

        def write(rep, title):
            barrier.wait()
            return rep.patch(pid, {"title": title}).status

        with cf.ThreadPoolExecutor(2) as pool:
            statuses = list(pool.map(lambda args: write(*args),
                                     [(a, f"A{round_}"), (b, f"B{round_}")]))
        stored = a.get(pid).json()

        def agrees(rep):
            res = rep.found(f"run:x{run}")
            return bool(res) and res[0]["title"] == stored["title"]

        took = wait_until(lambda: all(agrees(r) for r in replicas), timeout=5)
        if took is None or statuses != [200, 200]:
            diverged.append((round_, statuses, stored["title"]))
    check("10 rounds of concurrent updates through A and B: one state, the store's, on all three",
          not diverged, f"{diverged[:3]}")

    # 4. kill -9 during writes
    acked, stop = [], threading.Event()
    lock = threading.Lock()

    def writer(rep, prefix):
        i = 0
        while not stop.is_set():
            p = f"k{run}{prefix}{i}"
            i += 1
            try:
                r = rep.create(p, [f"run:k{run}", f"run:{p}"])
            except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
                time.sleep(0.05)
                continue
            if r.status == 201:
                with lock:
                    acked.append(p)
            else:
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(a, "a")), threading.Thread(target=writer, args=(b, "b"))]
    for t in threads:
        t.start()
    time.sleep(2.0)
    b.kill9()
    killed_at = time.monotonic()
    time.sleep(1.0)
    b.start()
    ready_after = b.wait_ready()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join()
    print(f"replicas: kill -9 of {b.name} during writes; it was ready again {ready_after:.1f} s after "
          f"its restart ({time.monotonic() - killed_at:.1f} s after the kill)", flush=True)
    in_store = [p for p in acked if a.get(p).status == 200]
    lost = len(acked) - len(in_store)
    print(f"replicas: writes acknowledged {len(acked)}, lost {lost}", flush=True)
    check("kill -9: every acknowledged write is in the store (lost = 0)", acked and lost == 0,
          f"acknowledged {len(acked)}, lost {lost}")

    def all_found(rep):
        res = rep.search(f"run:k{run}", k=100)
        if res.status != 200:
            return False
        got = {x["product_id"] for x in res.json()["results"]}
        return set(acked) <= got

    # One search per replica finds them all when they fit in one page.
    if len(acked) <= 100:
        took = wait_until(lambda: all(all_found(r) for r in replicas), timeout=10, step=0.1)
        check(f"kill -9: all {len(acked)} acknowledged products are found on every replica, "
              f"the restarted one included", took is not None)
    else:
        missing = [(r.name, p) for p in acked for r in replicas if not r.found(f"run:{p}")]
        check(f"kill -9: all {len(acked)} acknowledged products are found on every replica, "
              f"the restarted one included", not missing, f"missing: {missing[:5]}")

    # 5. Postgres outage
    pg.stop("fast")
    stopped_at = time.monotonic()
    outage = {"write_503": 0, "write_other": [], "retry_after": 0, "search_ok": 0, "search_other": [],
              "write_s": [], "search_s": []}
    deadline = stopped_at + 8.0
    while time.monotonic() < deadline:
        for rep in replicas:
            t0 = time.monotonic()
            r = rep.create(f"o{run}-{uuid.uuid4().hex[:6]}", [f"run:o{run}"])
            outage["write_s"].append(time.monotonic() - t0)
            if r.status == 503:
                outage["write_503"] += 1
                outage["retry_after"] += "Retry-After" in r.headers or "retry-after" in r.headers
                code = (r.json() or {}).get("error", {}).get("code")
                if code != "store_unavailable":
                    outage["write_other"].append(code)
            else:
                outage["write_other"].append(r.status)
            t0 = time.monotonic()
            s = rep.search(f"run:k{run}")
            outage["search_s"].append(time.monotonic() - t0)
            if s.status == 200 and s.json()["results"]:
                outage["search_ok"] += 1
            else:
                outage["search_other"].append(s.status)
    print(f"replicas: Postgres down: {outage['write_503']} writes answered 503 "
          f"({outage['retry_after']} with Retry-After), {outage['search_ok']} searches answered "
          f"with results, other answers: writes {outage['write_other'][:5]}, searches "
          f"{outage['search_other'][:5]}; answered in: writes {ms(outage['write_s'])}, "
          f"searches {ms(outage['search_s'])}", flush=True)
    check("Postgres down: every write gets 503 store_unavailable with Retry-After",
          outage["write_503"] > 0 and not outage["write_other"]
          and outage["retry_after"] == outage["write_503"])
    check("Postgres down: every search is answered from memory",
          outage["search_ok"] > 0 and not outage["search_other"])
    pg.start()
    back_at = time.monotonic()
    recovered = {}
    for rep in replicas:
        took = wait_until(lambda: rep.create(f"r{run}-{rep.name}", [f"run:r{run}{rep.name}"]).status == 201,
                          timeout=30, step=0.1)
        recovered[rep.name] = None if took is None else time.monotonic() - back_at
    print(f"replicas: Postgres back after {back_at - stopped_at:.1f} s down; first successful write "
          f"after: " + ", ".join(f"{n} {t:.1f} s" if t is not None else f"{n} never"
                                 for n, t in recovered.items()), flush=True)
    check("after the outage every replica accepts writes again on its own",
          all(t is not None for t in recovered.values()))
    took = wait_until(lambda: all(r.found(f"run:r{run}{w.name}") for r in replicas for w in replicas),
                      timeout=10, step=0.1)
    check("after the outage the writes made through each replica are found on all three",
          took is not None)
    # The LISTEN connection comes back on its own too (the follower polls meanwhile).
    for rep in replicas:
        def following():
            feed = rep.ready_json().get("feed") or {}
            return feed.get("error") is None and feed.get("listening") is True
        took = wait_until(following, timeout=15, step=0.1)
        check(f"{rep.name} follows the feed again (no error, listening)"
              + (f", {time.monotonic() - back_at:.1f} s after Postgres came back" if took is not None else ""),
              took is not None, json.dumps(rep.ready_json().get("feed")))
    return run


def hot_swap(replicas, work, run):
    a, b, c = replicas[:3]
    bundle = os.path.join(work, "bundle-v2")
    shutil.copytree(os.path.join(ROOT, "models/default"), bundle)
    with open(os.path.join(bundle, "manifest.json")) as f:
        manifest = json.load(f)
    old = manifest["model_version"]
    new = f"{old}-replicas-{run}"
    manifest["model_version"] = new
    with open(os.path.join(bundle, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    r = request("POST", a.url + "/v1/admin/model", json.dumps({"bundle": bundle}).encode(),
                {"content-type": "application/json"})
    if not check("the hot swap is accepted by A", r.status == 202, f"HTTP {r.status}: {r.body[:200]!r}"):
        return
    started = time.monotonic()

    def serving(rep):
        return rep.ready_json().get("model_version")

    took = wait_until(lambda: all(serving(rep) == new for rep in replicas), timeout=120, step=0.2)
    swaps = {rep.name: (rep.ready_json().get("model_swap") or {}) for rep in replicas}
    images = {n: s.get("images") for n, s in swaps.items()}
    print(f"replicas: model swap {old} -> {new} through {a.name}: every replica serves it after "
          f"{'never' if took is None else f'{time.monotonic() - started:.1f} s'}; images each "
          f"re-embedded: {images}", flush=True)
    check("after a hot swap on A, every replica serves the new model", took is not None,
          json.dumps(swaps))
    for rep in replicas:
        pid = f"s{run}{rep.name}"
        check(f"a write through {rep.name} after the swap is accepted",
              rep.create(pid, [f"run:{pid}"]).status == 201)
    took = wait_until(lambda: all(r.found(f"run:s{run}{w.name}") for r in replicas for w in replicas),
                      timeout=10, step=0.1)
    check("with the new model, writes through each replica are found on all three", took is not None)
    took = wait_until(lambda: all(len(r.found(f"run:k{run}") or []) == 5 for r in replicas),
                      timeout=10, step=0.1)
    check("products written before the swap are found on all three with the new model",
          took is not None)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/debug/snapshop"))
    ap.add_argument("-n", "--replicas", type=int, default=3)
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--serve", action="store_true", help="start them and wait until Ctrl-C")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    # SIGTERM (and SIGINT where a shell ignores it for background jobs) stops it like Ctrl-C.
    def interrupt(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    if not os.path.exists(args.bin):
        sys.exit(f"replicas: {args.bin} is missing: cargo build --bin snapshop")
    if not args.serve and args.replicas < 3:
        sys.exit("replicas: the proof needs 3 replicas")
    work = tempfile.mkdtemp(prefix="snapshop-replicas.")
    shared = os.path.join(work, "images")
    os.makedirs(shared)
    pg = Postgres()
    replicas = []
    try:
        pg.init()
        print(f"replicas: Postgres on 127.0.0.1:{pg.port} ({pg.dir}), shared images in {shared}", flush=True)
        replicas = [Replica(f"r{i}", args.bin, work, shared, pg.url, {}) for i in range(args.replicas)]
        # One at a time: the first runs the migrations, the others find them done.
        for r in replicas:
            r.start()
            took = r.wait_ready()
            print(f"replicas: {r.name} ready on {r.url} in {took:.1f} s (log {r.log_path})", flush=True)
        if args.serve:
            print("replicas: serving; admin key " + ADMIN + "; Ctrl-C stops them", flush=True)
            try:
                while all(r.proc.poll() is None for r in replicas):
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
            return 0
        run = proof(replicas, pg, args.writes)
        hot_swap(replicas, work, run)
    except Exception as e:  # a crash of the harness itself is a failure, with its reason
        not_ok("the replica proof ran to the end", repr(e))
    finally:
        for r in replicas:
            r.stop()
        pg.remove()
        if failed and not args.keep:
            for r in replicas:
                try:
                    with open(r.log_path, "rb") as f:
                        tail = f.read()[-3000:].decode(errors="replace")
                    print(f"--- last lines of {r.name}'s log ---\n{tail}", flush=True)
                except OSError:
                    pass
        if args.keep:
            print(f"replicas: logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not args.serve:
        print(f"replicas: {passed} passed, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
