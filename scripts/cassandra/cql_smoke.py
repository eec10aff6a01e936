#!/usr/bin/env python3
"""CQL smoke test for the Herald test Cassandra (needs `pip install cassandra-driver`).
Usage: cql_smoke.py [port]   (default: $CASSANDRA_PORT or 9042)"""
import os, sys, time
from cassandra.cluster import Cluster

port = int(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("CASSANDRA_PORT", "9042"))
t0 = time.time()
cluster = Cluster(["127.0.0.1"], port=port, protocol_version=5)
s = cluster.connect()
print("release_version:", s.execute("SELECT release_version FROM system.local").one()[0])
s.execute("CREATE KEYSPACE IF NOT EXISTS t WITH replication = {'class':'SimpleStrategy','replication_factor':1}")
s.execute("CREATE TABLE IF NOT EXISTS t.x (k int PRIMARY KEY, v text)")
s.execute("TRUNCATE t.x")
r1 = s.execute("INSERT INTO t.x (k, v) VALUES (1, 'hello') IF NOT EXISTS").one()
r2 = s.execute("INSERT INTO t.x (k, v) VALUES (1, 'again') IF NOT EXISTS").one()
assert r1[0] is True, r1
assert r2[0] is False, r2   # LWT (Paxos) rejected the duplicate
rows = list(s.execute("SELECT k, v FROM t.x WHERE k = 1"))
assert [(r.k, r.v) for r in rows] == [(1, "hello")], rows
s.execute("DROP KEYSPACE t")
cluster.shutdown()
print(f"CQL OK (keyspace/table/LWT insert/select) in {time.time() - t0:.2f}s")
