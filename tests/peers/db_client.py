"""Database clients for the protocol tests, each a real driver from PyPI.

    python3 db_client.py KIND PORT

KIND: pg (psycopg2: simple query protocol), pg3 (psycopg 3: extended protocol, named prepared
statements), mysql (PyMySQL: COM_QUERY), mysqlprep (mysql-connector-python: server-side
prepared statements), redis (redis-py: commands, a pipeline, errors, SELECT).

Prints "ready", waits for a line on stdin (so the agent can start first), runs its operations,
printing one JSON line each ({"op": ..., "ok": true/false}), then "done".
"""
import json
import sys

kind, port = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()


def report(op, fn):
    try:
        fn()
        ok = True
    except Exception as e:  # the test expects some operations to fail
        ok = False
        print(json.dumps({"op": op, "ok": False, "error": type(e).__name__}), flush=True)
        return
    print(json.dumps({"op": op, "ok": ok}), flush=True)


if kind == "pg":
    import psycopg2
    conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop")
    conn.autocommit = True
    cur = conn.cursor()
    report("create", lambda: cur.execute("CREATE TABLE items (id int PRIMARY KEY, name text)"))
    report("insert", lambda: cur.execute("INSERT INTO items VALUES (%s, %s)", (1, "secret-widget")))
    report("select", lambda: (cur.execute("SELECT name FROM items WHERE id = %s", (1,)), cur.fetchall()))
    report("syntax", lambda: cur.execute("SELEC 1"))
    report("missing", lambda: cur.execute("SELECT * FROM missing_table"))
    conn.close()
elif kind == "pg3":
    import psycopg
    conn = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="shop", autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text)")
    conn.execute("INSERT INTO items VALUES (2, 'gadget') ON CONFLICT DO NOTHING")
    q = "SELECT name FROM items WHERE id = %s"
    report("extended", lambda: conn.execute(q, (2,)).fetchall())
    report("prepared-1", lambda: conn.execute(q, (2,), prepare=True).fetchall())
    report("prepared-2", lambda: conn.execute(q, (2,), prepare=True).fetchall())
    report("missing", lambda: conn.execute("SELECT * FROM missing_table WHERE id = %s", (1,)))
    conn.close()
elif kind == "mysql":
    import pymysql
    conn = pymysql.connect(host="127.0.0.1", port=port, user="shop", password="shop", database="shop", autocommit=True)
    cur = conn.cursor()
    report("create", lambda: cur.execute("CREATE TABLE items (id int PRIMARY KEY, name varchar(64))"))
    report("insert", lambda: cur.execute("INSERT INTO items VALUES (%s, %s)", (1, "secret-widget")))
    report("select", lambda: (cur.execute("SELECT name FROM items WHERE id = %s", (1,)), cur.fetchall()))
    report("syntax", lambda: cur.execute("SELEC 1"))
    report("missing", lambda: cur.execute("SELECT * FROM missing_table"))
    conn.close()
elif kind == "mysqlprep":
    import mysql.connector
    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="shop", password="shop",
                                   database="shop", use_pure=True, autocommit=True, ssl_disabled=True)
    cur = conn.cursor(prepared=True)
    q = "SELECT name FROM items WHERE id = %s"
    report("prepared-1", lambda: (cur.execute(q, (1,)), cur.fetchall()))
    report("prepared-2", lambda: (cur.execute(q, (1,)), cur.fetchall()))
    conn.close()
elif kind == "redis":
    import redis
    r = redis.Redis(host="127.0.0.1", port=port, db=2)
    report("set", lambda: r.set("user:1", "secret-value"))
    report("get", lambda: r.get("user:1"))
    def pipeline():
        p = r.pipeline(transaction=False)
        p.incr("counter")
        p.incr("counter")
        p.get("counter")
        p.execute()
    report("pipeline", pipeline)
    report("unknown", lambda: r.execute_command("NOSUCHCMD", "x"))
    report("wrongtype", lambda: r.lpush("user:1", "x"))
    r.close()
print("done", flush=True)
