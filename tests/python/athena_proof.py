#!/usr/bin/env python3
"""Check the Athena DDL and named queries of `flowlog-aggregator athena-ddl` on real
engines, and flowlogs-reader's S3 reader on our S3 output (tests/tests/athena.rs).

usage:
    athena_proof.py gen OUT.log [--records N] [--seed S]
    athena_proof.py expected INPUT.log --fields F,F,... [--kind text|parquet]
                             [--account A] [--region R]
    athena_proof.py engines MANIFEST.json
    athena_proof.py flowlogs-reader --input IN.log --location BUCKET[/PREFIX]
                                    --endpoint URL --fields F,F,... --format text|parquet

`gen` writes a deterministic plain-text flow log (header line, single spaces, `-` for
n/a): two accounts, two regions, several interfaces, three UTC days with records that end
in the last five minutes of a day (filed in the next day's folder), TCP/UDP/ICMP, SSH and
RDP (and UDP 3389, which the SSH/RDP query must not count), REJECT rows, IPv6 rows, and
NODATA rows (account, interface, start and end set, everything else `-`).

`engines` reads a manifest written by the Rust test:

    {"input": "in.log", "account_id": "...", "region": "...",
     "cases": [{"name": "text_default", "ddl": "t.sql", "ddl_projection": "p.sql",
                "queries": "queries/", "format": "text" | "parquet",
                "layout": "default" | "hive", "fields": ["version", ...]}, ...]}

The expected result of every named query is computed here from the input records with
the semantics of the query contract (independently of any engine). Then one Spark session
(local mode, Hive support, Derby metastore) runs each case's DDL, adds its partitions and
runs every query file; DuckDB then reads the same files through a view named like the
table and runs the same query files. Any difference is printed and the exit code is 1.

`expected` prints the expected results of the named queries for a format (for debugging).

`flowlogs-reader` reads the bucket through `flowlogs_reader.S3FlowLogsReader` (credentials
from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and checks it returns every input record
(as a multiset over the format's fields except `version`); NODATA rows come back as
records too, with None in the fields that were `-`.
"""

import argparse
import calendar
import collections
import datetime
import glob
import json
import os
import random
import re
import sys
import tempfile
import time


class Mismatch(Exception):
    """An engine disagrees with the expected results or the DDL is unusable."""


# ---------------------------------------------------------------------------------------
# Input records

INPUT_FIELDS = [
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "action", "log-status", "vpc-id",
    "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr",
    "region", "az-id", "flow-direction",
]

# Fields whose Athena column is int or bigint (spec section 5); all others are strings.
INT_FIELDS = {
    "version", "srcport", "dstport", "protocol", "packets", "bytes", "start", "end",
    "tcp-flags", "traffic-path",
}

ACCOUNT_A = "111122223333"
ACCOUNT_B = "444455556666"

# (interface id, account, region, az id, vpc, subnet, instance or "-")
INTERFACES = [
    ("eni-0a0000000000000a1", ACCOUNT_A, "us-east-1", "use1-az1", "vpc-0a000000000000001",
     "subnet-0a00000000000001", "i-0a000000000000001"),
    ("eni-0a0000000000000a2", ACCOUNT_A, "us-east-1", "use1-az4", "vpc-0a000000000000001",
     "subnet-0a00000000000002", "-"),
    ("eni-0a0000000000000a3", ACCOUNT_A, "eu-west-1", "euw1-az2", "vpc-0a000000000000002",
     "subnet-0a00000000000003", "i-0a000000000000003"),
    ("eni-0b0000000000000b1", ACCOUNT_B, "us-east-1", "use1-az2", "vpc-0b000000000000001",
     "subnet-0b00000000000001", "i-0b000000000000001"),
    ("eni-0b0000000000000b2", ACCOUNT_B, "eu-west-1", "euw1-az1", "vpc-0b000000000000002",
     "subnet-0b00000000000002", "i-0b000000000000002"),
    ("eni-0b0000000000000b3", ACCOUNT_B, "eu-west-1", "euw1-az3", "vpc-0b000000000000002",
     "subnet-0b00000000000003", "-"),
]
# Has only NODATA rows on the second day: its sums for that day are NULL.
IDLE_INTERFACE = ("eni-0b0000000000000b9", ACCOUNT_B)

INTERNAL_V4 = [f"10.{n}.{n * 7 % 250}.{10 + n}" for n in range(1, 9)]
EXTERNAL_V4 = ["203.0.113.5", "198.51.100.77", "192.0.2.200", "203.0.113.140",
               "198.51.100.9", "192.0.2.33", "203.0.113.250", "198.51.100.180"]
# Written in canonical (RFC 5952) form: one run of zero groups, lowercase, so the text the
# aggregator prints after parsing them is the same string.
V6_LOCAL = ["2600:1f18:1234:5600::10", "2600:1f18:1234:5601::2a", "2a05:d018:9ab:2c01::7"]
V6_REMOTE = ["2001:db8:85a3::8a2e", "2001:db8:4::1", "2606:4700:10::6814:7"]
ADMINS_V4 = EXTERNAL_V4[:3]
SERVERS_V4 = INTERNAL_V4[:3]

DAY0 = datetime.datetime(2026, 5, 12, tzinfo=datetime.timezone.utc)
DAYS = 3
# Window starts (hour, minute) records end in, each day; the last ones are filed in the
# next day's folder.
SLOTS = [(0, 0), (11, 20), (23, 55)]


def epoch(dt):
    return int(dt.timestamp())


def gen_records(count, seed):
    """Returns `count` records (dicts field → text) in a deterministic order."""
    rng = random.Random(seed)
    records = []

    def base(iface, end, start):
        eni, account, region, az, vpc, subnet, instance = iface
        return {
            "version": "5", "account-id": account, "interface-id": eni,
            "start": str(start), "end": str(end), "log-status": "OK", "vpc-id": vpc,
            "subnet-id": subnet, "instance-id": instance, "region": region, "az-id": az,
        }

    def pick_end():
        day = rng.randrange(DAYS)
        hour, minute = rng.choice(SLOTS)
        window = DAY0 + datetime.timedelta(days=day, hours=hour, minutes=minute)
        # Edges of the window on purpose: its first and its last second.
        offset = rng.choice([0, 299, rng.randrange(300), rng.randrange(300)])
        return epoch(window) + offset

    def nodata(eni, account, end):
        row = {f: "-" for f in INPUT_FIELDS}
        row.update({"version": "5", "account-id": account, "interface-id": eni,
                    "start": str(end - 58), "end": str(end), "log-status": "NODATA"})
        return row

    for n in range(count):
        iface = rng.choice(INTERFACES)
        end = pick_end()
        start = end - rng.randrange(1, 60)
        kind = rng.random()
        if kind < 0.03:
            records.append(nodata(iface[0], iface[1], end))
            continue
        row = base(iface, end, start)
        ingress = rng.random() < 0.5
        if kind < 0.12:
            row["type"] = "IPv6"
            local, remote = rng.choice(V6_LOCAL), rng.choice(V6_REMOTE)
            proto = rng.choice([6, 6, 58])
            dport = 443 if proto == 6 else 0
        else:
            row["type"] = "IPv4"
            local, remote = rng.choice(INTERNAL_V4), rng.choice(EXTERNAL_V4 + INTERNAL_V4)
            proto, dport = rng.choices(
                [(6, 443), (6, 80), (6, 5432), (6, 22), (6, 3389), (17, 53), (17, 123),
                 (17, 3389), (1, 0)],
                weights=[30, 10, 8, 8, 6, 8, 4, 6, 8])[0]
            if dport in (22, 3389):
                # Admin traffic: a few admin hosts to a few servers, so the SSH/RDP query
                # has well under 100 groups, and UDP 3389 shares them with TCP 3389.
                ingress, local, remote = True, rng.choice(SERVERS_V4), rng.choice(ADMINS_V4)
        row["flow-direction"] = "ingress" if ingress else "egress"
        src, dst = (remote, local) if ingress else (local, remote)
        if proto == 6:
            sport = rng.randrange(32768, 61000)
            flags = rng.choice([2, 3, 18, 19, 1])
        elif proto == 17:
            sport = rng.randrange(1024, 65535)
            flags = 0
        else:
            sport = 0
            flags = 0
        packets = rng.randrange(1, 2000)
        row.update({
            "srcaddr": src, "dstaddr": dst, "srcport": str(sport), "dstport": str(dport),
            "protocol": str(proto), "packets": str(packets),
            "bytes": str(packets * rng.randrange(40, 1500) + rng.randrange(0, 40)),
            "action": "REJECT" if rng.random() < 0.15 else "ACCEPT",
            "tcp-flags": str(flags),
            # A NAT or load-balancer hop now and then: packet-level addresses differ.
            "pkt-srcaddr": src if rng.random() < 0.9 else rng.choice(INTERNAL_V4),
            "pkt-dstaddr": dst,
        })
        records.append(row)

    # The idle interface: NODATA only, on the second day.
    for hour in (3, 9, 15):
        end = epoch(DAY0 + datetime.timedelta(days=1, hours=hour, minutes=2))
        records.append(nodata(IDLE_INTERFACE[0], IDLE_INTERFACE[1], end))
    # Exact boundaries: 23:54:59 stays on its day, 23:55:00 and 23:59:59 go to the next.
    iface = INTERFACES[0]
    for day in range(DAYS):
        midnight = epoch(DAY0 + datetime.timedelta(days=day + 1))
        for end in (midnight - 301, midnight - 300, midnight - 1, midnight):
            row = base(iface, end, end - 30)
            row.update({
                "srcaddr": INTERNAL_V4[0], "dstaddr": EXTERNAL_V4[0], "srcport": "40000",
                "dstport": "22", "protocol": "6", "packets": "3", "bytes": str(180 + day),
                "action": "ACCEPT", "tcp-flags": "3", "type": "IPv4",
                "pkt-srcaddr": INTERNAL_V4[0], "pkt-dstaddr": EXTERNAL_V4[0],
                "flow-direction": "egress",
            })
            records.append(row)
    for row in records:
        for field in INPUT_FIELDS:
            row.setdefault(field, "-")
    # In time order, as a flow log arrives: the importer seals a window once later ones
    # fill up, and out-of-order records would only spread over more files.
    records.sort(key=lambda row: int(row["end"]))
    return records


def check_coverage(records):
    """Fails unless the input has every case the queries must be checked against."""
    def count(pred):
        return sum(1 for r in records if pred(r))

    late = count(lambda r: r["end"] != "-" and int(r["end"]) % 86400 >= 86400 - 300)
    wants = {
        "two accounts": len({r["account-id"] for r in records}) >= 2,
        "two regions": len({r["region"] for r in records} - {"-"}) >= 2,
        "three days": len({int(r["end"]) // 86400 for r in records}) >= 3,
        "ends in 23:55-23:59:59": late > 0,
        "TCP 22": count(lambda r: r["protocol"] == "6" and r["dstport"] == "22") > 0,
        "TCP 3389": count(lambda r: r["protocol"] == "6" and r["dstport"] == "3389") > 0,
        "UDP 3389": count(lambda r: r["protocol"] == "17" and r["dstport"] == "3389") > 0,
        "ICMP": count(lambda r: r["protocol"] == "1") > 0,
        "REJECT": count(lambda r: r["action"] == "REJECT") > 0,
        "IPv6": count(lambda r: r["type"] == "IPv6") > 0,
        "NODATA": count(lambda r: r["log-status"] == "NODATA") > 0,
        "more than 10 address pairs": len({(r["srcaddr"], r["dstaddr"]) for r in records
                                           if r["srcaddr"] != "-"}) > 10,
    }
    missing = [name for name, ok in wants.items() if not ok]
    if missing:
        raise Mismatch(f"the input lacks: {', '.join(missing)}")


def cmd_gen(args):
    records = gen_records(args.records, args.seed)
    with open(args.out, "w", encoding="ascii") as out:
        out.write(" ".join(INPUT_FIELDS) + "\n")
        for row in records:
            out.write(" ".join(row[f] for f in INPUT_FIELDS) + "\n")
    print(f"wrote {len(records)} records to {args.out}")


def read_input(path):
    """Returns the records of a plain-text flow log as dicts field → text."""
    with open(path, encoding="ascii") as f:
        header = f.readline().split()
        rows = []
        for line in f:
            values = line.rstrip("\n").split(" ")
            if len(values) != len(header):
                raise SystemExit(f"{path}: bad line {line!r}")
            rows.append(dict(zip(header, values)))
    return rows


# ---------------------------------------------------------------------------------------
# Expected query results (the contract's semantics, in plain Python)

ACCOUNT_RE = re.compile(r"^[0-9]{12}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-[0-9]+$")


def folder_day(row):
    """'yyyy/MM/dd' of the folder a record is filed in: the end of the 5-minute UTC window
    that holds its `end`."""
    ts = (int(row["end"]) // 300 + 1) * 300
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y/%m/%d")


def folder_of(row, account, region):
    acc = row["account-id"] if ACCOUNT_RE.match(row["account-id"]) else account
    reg = row["region"] if REGION_RE.match(row.get("region", "-")) else region
    return acc, reg, folder_day(row)


def engine_view(row, fields, kind):
    """The row as the table shows it: a dict column → value, plus the partition day.
    `-` is NULL in int columns (and in every Parquet column), '-' in text strings."""
    out = {}
    for field in fields:
        value = row.get(field, "-")
        col = field.replace("-", "_")
        if value == "-" and (kind == "parquet" or field in INT_FIELDS):
            out[col] = None
        elif field in INT_FIELDS:
            out[col] = int(value)
        else:
            out[col] = value
    return out


def null_sum(values):
    """SQL SUM: NULLs ignored, NULL when there is no value."""
    values = [v for v in values if v is not None]
    return sum(values) if values else None


class Expected:
    """One query's expected result: column names and rows (tuples), in order."""

    def __init__(self, columns, rows):
        self.columns = columns
        self.rows = rows


def expected_results(records, fields, kind, account, region):
    """Returns {query file name: Expected} for the queries the format allows."""
    cols = {f.replace("-", "_") for f in fields}
    rows = []
    for rec in records:
        view = engine_view(rec, fields, kind)
        view["__day"] = folder_of(rec, account, region)[2]
        rows.append(view)
    has = cols.__contains__
    out = {}

    def grouped(selected, keys):
        groups = collections.OrderedDict()
        for r in selected:
            groups.setdefault(tuple(r[k] for k in keys), []).append(r)
        return groups

    def sums(members):
        extra = {"flows": len(members)}
        if has("packets"):
            extra["total_packets"] = null_sum(r["packets"] for r in members)
        if has("bytes"):
            extra["total_bytes"] = null_sum(r["bytes"] for r in members)
        return extra

    if has("srcaddr") and has("dstaddr") and has("bytes"):
        columns = ["srcaddr", "dstaddr", "total_bytes"] + (
            ["total_packets"] if has("packets") else [])
        result = []
        for key, members in grouped([r for r in rows if r["bytes"] is not None],
                                    ["srcaddr", "dstaddr"]).items():
            agg = dict(zip(["srcaddr", "dstaddr"], key), **sums(members))
            result.append(tuple(agg[c] for c in columns))
        result.sort(key=lambda t: (-t[2], t[0], t[1]))
        out["top-talkers.sql"] = Expected(columns, result[:10])

    if has("action") and has("srcaddr") and has("dstaddr"):
        keys = ["srcaddr", "dstaddr"] + [c for c in ("dstport", "protocol") if has(c)]
        columns = keys + ["flows"] + [c for c, f in (("total_packets", "packets"),
                                                      ("total_bytes", "bytes")) if has(f)]
        result = []
        for key, members in grouped([r for r in rows if r["action"] == "REJECT"],
                                    keys).items():
            agg = dict(zip(keys, key), **sums(members))
            result.append(tuple(agg[c] for c in columns))
        flows = columns.index("flows")
        result.sort(key=lambda t: (-t[flows],) + t[:len(keys)])
        out["rejected-traffic.sql"] = Expected(columns, result[:100])

    if has("srcaddr") and has("dstaddr") and has("dstport"):
        keys = ["srcaddr", "dstaddr", "dstport"] + (["action"] if has("action") else [])
        columns = keys + ["flows"] + [c for c, f in (("total_packets", "packets"),
                                                      ("total_bytes", "bytes")) if has(f)]
        selected = [r for r in rows if r["dstport"] in (22, 3389)
                    and (not has("protocol") or r["protocol"] == 6)]
        result = []
        for key, members in grouped(selected, keys).items():
            agg = dict(zip(keys, key), **sums(members))
            result.append(tuple(agg[c] for c in columns))
        flows = columns.index("flows")
        result.sort(key=lambda t: (-t[flows],) + t[:len(keys)])
        out["ssh-rdp-traffic.sql"] = Expected(columns, result[:100])

    if has("interface_id") and has("bytes"):
        columns = ["day", "interface_id", "flows"] + (
            ["total_packets"] if has("packets") else []) + ["total_bytes"]
        result = []
        for key, members in grouped(rows, ["__day", "interface_id"]).items():
            agg = dict(day=key[0], interface_id=key[1], **sums(members))
            result.append(tuple(agg[c] for c in columns))
        result.sort(key=lambda t: (t[0], t[1]))
        out["interface-traffic-by-day.sql"] = Expected(columns, result)

    if has("srcaddr") and has("dstaddr") and has("bytes"):
        if has("type"):
            selected = [r for r in rows if r["type"] == "IPv6"]
        else:
            selected = [r for r in rows if ":" in (r["srcaddr"] or "")
                        or ":" in (r["dstaddr"] or "")]
        columns = ["srcaddr", "dstaddr", "flows"] + (
            ["total_packets"] if has("packets") else []) + ["total_bytes"]
        result = []
        for key, members in grouped(selected, ["srcaddr", "dstaddr"]).items():
            agg = dict(zip(["srcaddr", "dstaddr"], key), **sums(members))
            result.append(tuple(agg[c] for c in columns))
        result.sort(key=lambda t: (-t[-1], t[0], t[1]))
        out["ipv6-traffic.sql"] = Expected(columns, result[:100])

    if has("bytes"):
        agg = sums(rows)
        agg["records"] = agg.pop("flows")
        columns = ["records"] + (["total_packets"] if has("packets") else []) + [
            "total_bytes"]
        out["total-bytes.sql"] = Expected(columns, [tuple(agg[c] for c in columns)])
    return out


def expected_partitions(records, layout, account, region):
    """The partition value tuples the output must have, in the DDL's partition order."""
    parts = set()
    for rec in records:
        acc, reg, day = folder_of(rec, account, region)
        if layout == "default":
            parts.add((acc, reg, day))
        elif layout == "hive":
            parts.add((acc, reg) + tuple(day.split("/")))
        else:
            raise SystemExit(f"layout {layout} is not covered by this check")
    return parts


def cmd_expected(args):
    records = read_input(args.input)
    fields = args.fields.split(",")
    for name, exp in sorted(expected_results(records, fields, args.kind, args.account,
                                             args.region).items()):
        print(f"-- {name}: {exp.columns}")
        for row in exp.rows:
            print("   ", row)


# ---------------------------------------------------------------------------------------
# SQL files

def split_statements(text):
    """Statements of an `athena-ddl` output: each ends with `;` and a blank line."""
    statements = []
    for chunk in re.split(r";[ \t]*\n[ \t]*\n", text.strip() + "\n\n"):
        chunk = chunk.strip()
        if chunk.endswith(";"):
            chunk = chunk[:-1].rstrip()
        body = "\n".join(l for l in chunk.splitlines() if not l.strip().startswith("--"))
        if body.strip():
            statements.append(chunk)
    return statements


def read_query(path):
    """One named query: its SELECT without the final `;`."""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    if not text.endswith(";"):
        raise Mismatch(f"{path}: does not end with ';'")
    return text[:-1].rstrip()


class TableInfo:
    """What the CREATE TABLE statement says: name, columns, partition columns, location,
    storage."""

    def __init__(self, create):
        m = re.search(r"CREATE\s+EXTERNAL\s+TABLE\s+IF\s+NOT\s+EXISTS\s+`?([A-Za-z0-9_.]+)`?"
                      r"\s*\((.*?)\)\s*PARTITIONED\s+BY\s*\((.*?)\)", create, re.S | re.I)
        if not m:
            raise Mismatch(f"cannot parse the CREATE TABLE statement:\n{create}")
        self.name = m.group(1)
        self.columns = self._columns(m.group(2))
        self.partitions = [name for name, _ in self._columns(m.group(3))]
        loc = re.search(r"LOCATION\s+'([^']+)'", create)
        if not loc:
            raise Mismatch("the CREATE TABLE statement has no LOCATION")
        self.location = loc.group(1)
        self.parquet = "ParquetHiveSerDe" in create
        self.text = "FIELDS TERMINATED BY ' '" in create

    @staticmethod
    def _columns(text):
        cols = []
        for item in text.split(","):
            parts = item.split()
            if len(parts) != 2:
                raise Mismatch(f"cannot parse column definition {item!r}")
            cols.append((parts[0].strip("`"), parts[1].lower()))
        return cols


def local_path(url):
    if not url.startswith("file://"):
        raise Mismatch(f"LOCATION {url} is not a file:// URL")
    return url[len("file://"):]


# ---------------------------------------------------------------------------------------
# Engines

def compare(engine, case, query, exp, columns, rows):
    """Returns a list of problems (empty when the result is exactly the expected one)."""
    problems = []
    if columns != exp.columns:
        problems.append(f"{engine} {case} {query}: columns {columns}, expected {exp.columns}")
        return problems
    rows = [tuple(r) for r in rows]
    if rows != exp.rows:
        lines = [f"{engine} {case} {query}: {len(rows)} rows, expected {len(exp.rows)}"]
        shown = 0
        for i in range(max(len(rows), len(exp.rows))):
            got = rows[i] if i < len(rows) else None
            want = exp.rows[i] if i < len(exp.rows) else None
            if got != want:
                lines.append(f"    row {i + 1}: got {got}, expected {want}")
                shown += 1
                if shown >= 10:
                    lines.append("    ...")
                    break
        problems.append("\n".join(lines))
    return problems


def start_spark(workdir):
    # Everything on the loopback interface; no UI; metastore and warehouse in workdir.
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    metastore = os.path.join(workdir, "metastore_db")
    builder = (
        SparkSession.builder.master("local[2]")
        .appName("athena-proof")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.adaptive.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", os.path.join(workdir, "warehouse"))
        .config("spark.hadoop.javax.jdo.option.ConnectionURL",
                f"jdbc:derby:;databaseName={metastore};create=true")
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={workdir}")
        # storage.location.template holds `${accid}`-style placeholders for Athena. With
        # Spark's default (substitution on) every unknown `${name}` is silently replaced
        # by an empty string, and the stored template comes out as `AWSLogs//vpcflowlogs//`.
        .config("spark.sql.variable.substitute", "false")
        .enableHiveSupport()
    )
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def header_condition(info):
    """SQL that is true for a header line read as a row: every string column holds its
    own field name (`account-id` in `account_id`, ...)."""
    strings = [c for c, t in info.columns if t == "string"]
    return " AND ".join(f"`{c}` = '{c.replace('_', '-')}'" for c in strings)


def run_spark(spark, case, results):
    problems = []
    notes = set()
    db = f"proof_{case['name']}"
    spark.sql(f"CREATE DATABASE {db}")
    spark.sql(f"USE {db}")
    with open(case["ddl"], encoding="utf-8") as f:
        statements = split_statements(f.read())
    if not statements or not statements[0].lstrip().upper().startswith("CREATE EXTERNAL TABLE"):
        return [f"spark {case['name']}: the DDL does not start with CREATE EXTERNAL TABLE"], notes
    info = TableInfo(statements[0])
    # The statements run exactly as generated.
    for statement in statements:
        try:
            spark.sql(statement)
        except Exception as e:  # noqa: BLE001 - any engine error is a finding
            return [f"spark {case['name']}: statement failed: {e}\n{statement}"], notes
    added = spark.sql(f"SHOW PARTITIONS {info.name}").collect()
    if len(added) != len(statements) - 1:
        problems.append(f"spark {case['name']}: {len(added)} partitions, "
                        f"{len(statements) - 1} ALTER statements")

    if info.text:
        # Spark's Hive table reader (HadoopTableReader, Spark 4.0.1) ignores the table
        # property skip.header.line.count (SPARK-11374), and no setting turns it on: each
        # file's header line comes back as a row, with NULL in the number columns and the
        # field names in the string columns. Athena, Hive and Trino skip it. To run the
        # queries unchanged, a temporary view with the table's name (Spark resolves
        # temporary views first) hides exactly those rows. Their count must be the number
        # of files (or 0 once Spark honours the property).
        files = sum(len([n for n in os.listdir(local_path(loc)) if not n.startswith(".")])
                    for loc in alter_partitions(case, info).values())
        headers = spark.sql(f"SELECT COUNT(*) FROM {info.name} WHERE "
                            f"{header_condition(info)}").collect()[0][0]
        if headers not in (0, files):
            problems.append(f"spark {case['name']}: {headers} header rows in {files} files")
        if headers:
            notes.add(f"skip.header.line.count ignored: {headers} header rows hidden")
        spark.sql(f"CREATE TEMPORARY VIEW {info.name} AS SELECT * FROM {db}.{info.name} "
                  f"WHERE NOT ({header_condition(info)})")
    # Parquet tables are read twice: by Spark's own Parquet reader (what Spark does with a
    # ParquetHiveSerDe table by default) and through the Hive SerDe itself. Both must
    # widen the INT32 `protocol` of the files to the table's bigint.
    readers = [("spark", "true"), ("spark-hive-serde", "false")] if info.parquet else [
        ("spark", "true")]
    for engine, convert in readers:
        spark.conf.set("spark.sql.hive.convertMetastoreParquet", convert)
        for query, exp in sorted(results.items()):
            sql = read_query(os.path.join(case["queries"], query))
            try:
                df = spark.sql(sql)
                rows = [tuple(r) for r in df.collect()]
            except Exception as e:  # noqa: BLE001
                problems.append(f"{engine} {case['name']} {query}: failed: {e}")
                continue
            problems += compare(engine, case["name"], query, exp, df.columns, rows)
    spark.conf.set("spark.sql.hive.convertMetastoreParquet", "true")
    if info.text:
        spark.catalog.dropTempView(info.name)

    # The full DDL, with the partition projection properties, must be accepted too (Spark
    # ignores projection; it keeps the properties).
    if case.get("ddl_projection"):
        pdb = f"proof_{case['name']}_projection"
        spark.sql(f"CREATE DATABASE {pdb}")
        spark.sql(f"USE {pdb}")
        with open(case["ddl_projection"], encoding="utf-8") as f:
            pstatements = split_statements(f.read())
        try:
            for statement in pstatements:
                spark.sql(statement)
            props = {r[0]: r[1] for r in
                     spark.sql(f"SHOW TBLPROPERTIES {info.name}").collect()}
            template = props.get("storage.location.template", "")
            if props.get("projection.enabled") != "true" or "${" not in template:
                problems.append(f"spark {case['name']}: projection properties not kept: "
                                f"{props}")
        except Exception as e:  # noqa: BLE001
            problems.append(f"spark {case['name']}: the DDL with projection failed: {e}")
    return problems, notes


DUCK_TYPES = {"int": "INTEGER", "bigint": "BIGINT", "string": "VARCHAR"}

# Partition values from a file's path below the table LOCATION.
PATH_PATTERNS = {
    "default": r"^([0-9]{12})/vpcflowlogs/([^/]+)/([0-9]{4}/[0-9]{2}/[0-9]{2})/[^/]+$",
    "hive": r"^aws-account-id=([0-9]{12})/aws-service=vpcflowlogs/aws-region=([^/]+)/"
            r"year=([0-9]{4})/month=([0-9]{2})/day=([0-9]{2})/[^/]+$",
}


def duck_view(con, case, info):
    """Creates a view named like the table over the case's files, with the columns and
    types of the DDL and the partition columns taken from each file's path."""
    root = local_path(info.location).rstrip("/") + "/"
    suffix = ".log.parquet" if case["format"] == "parquet" else ".log.gz"
    files = sorted(glob.glob(root + "**/*" + suffix, recursive=True))
    if not files:
        raise Mismatch(f"duckdb {case['name']}: no *{suffix} files below {root}")
    pattern = PATH_PATTERNS[case["layout"]]
    parts = set()
    for path in files:
        m = re.match(pattern, path[len(root):])
        if not m:
            raise Mismatch(f"duckdb {case['name']}: unexpected path {path}")
        parts.add(m.groups())
    file_list = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
    sql_pattern = "'^" + re.escape(root).replace("'", "''") + pattern[1:] + "'"
    if info.parquet:
        select = ", ".join(f'CAST("{c}" AS {DUCK_TYPES[t]}) AS "{c}"' for c, t in info.columns)
        source = f"read_parquet({file_list}, filename = true)"
    elif info.text:
        # LazySimpleSerDe semantics: split on single spaces, no quoting; `-` is NULL in
        # number columns and stays the text '-' in string columns. Every column is read
        # as text and converted here, so a value that is neither `-` nor a number fails.
        types = ", ".join(f"'{c}': 'VARCHAR'" for c, _ in info.columns)
        select = ", ".join(
            f'"{c}"' if t == "string"
            else f'CASE WHEN "{c}" = \'-\' THEN NULL ELSE CAST("{c}" AS {DUCK_TYPES[t]}) END AS "{c}"'
            for c, t in info.columns)
        source = (f"read_csv({file_list}, delim = ' ', header = true, quote = '', "
                  f"escape = '', columns = {{{types}}}, auto_detect = false, "
                  f"filename = true)")
    else:
        raise Mismatch(f"duckdb {case['name']}: unknown storage in the DDL")
    part_cols = ", ".join(f"regexp_extract(filename, {sql_pattern}, {i + 1}) AS \"{c}\""
                          for i, c in enumerate(info.partitions))
    con.execute(f"CREATE VIEW {info.name} AS SELECT {select}, {part_cols} FROM {source}")
    return parts


def run_duckdb(case, results, spark_partitions):
    import duckdb

    problems = []
    with open(case["ddl"], encoding="utf-8") as f:
        statements = split_statements(f.read())
    info = TableInfo(statements[0])
    con = duckdb.connect()
    try:
        parts = duck_view(con, case, info)
    except Exception as e:  # noqa: BLE001
        return [f"duckdb {case['name']}: {e}"]
    if parts != spark_partitions:
        problems.append(f"duckdb {case['name']}: partitions from the file paths "
                        f"{sorted(parts)} differ from the ALTER statements' "
                        f"{sorted(spark_partitions)}")
    for query, exp in sorted(results.items()):
        sql = read_query(os.path.join(case["queries"], query))
        try:
            cur = con.execute(sql)
            columns = [d[0] for d in cur.description]
            rows = cur.fetchall()
        except Exception as e:  # noqa: BLE001
            problems.append(f"duckdb {case['name']} {query}: failed: {e}")
            continue
        problems += compare("duckdb", case["name"], query, exp, columns, rows)
    con.close()
    return problems


def alter_partitions(case, info):
    """Partition value tuples and locations of the ALTER TABLE statements of a case."""
    with open(case["ddl"], encoding="utf-8") as f:
        statements = split_statements(f.read())[1:]
    parts = {}
    for st in statements:
        m = re.match(r"ALTER TABLE\s+\S+\s+ADD IF NOT EXISTS PARTITION\s*\((.*?)\)\s*"
                     r"LOCATION\s+'([^']+)'$", st.strip(), re.S)
        if not m:
            raise Mismatch(f"{case['name']}: unexpected statement {st!r}")
        values = re.findall(r"`?(\w+)`?\s*=\s*'([^']*)'", m.group(1))
        if [k for k, _ in values] != info.partitions:
            raise Mismatch(f"{case['name']}: partition columns {values} in {st!r}")
        parts[tuple(v for _, v in values)] = m.group(2)
    return parts


def check_partition_locations(case, info, parts):
    """Every ALTER location is the folder of its partition values, below LOCATION."""
    problems = []
    base = info.location.rstrip("/") + "/"
    for values, location in parts.items():
        if case["layout"] == "default":
            acc, reg, day = values
            want = f"{base}{acc}/vpcflowlogs/{reg}/{day}/"
        else:
            acc, reg, y, m, d = values
            want = (f"{base}aws-account-id={acc}/aws-service=vpcflowlogs/aws-region={reg}/"
                    f"year={y}/month={m}/day={d}/")
        if location != want:
            problems.append(f"{case['name']}: partition {values} at {location}, "
                            f"expected {want}")
        elif not os.path.isdir(local_path(location)):
            problems.append(f"{case['name']}: {location} does not exist")
    return problems


def cmd_engines(args):
    with open(args.manifest, encoding="utf-8") as f:
        manifest = json.load(f)
    records = read_input(manifest["input"])
    check_coverage(records)
    account, region = manifest["account_id"], manifest["region"]
    problems = []
    plans = []
    for case in manifest["cases"]:
        results = expected_results(records, case["fields"], case["format"], account, region)
        present = {os.path.basename(p) for p in glob.glob(os.path.join(case["queries"],
                                                                       "*.sql"))}
        if present != set(results):
            problems.append(f"{case['name']}: query files {sorted(present)}, expected "
                            f"{sorted(results)}")
        results = {q: e for q, e in results.items() if q in present}
        with open(case["ddl"], encoding="utf-8") as f:
            info = TableInfo(split_statements(f.read())[0])
        try:
            parts = alter_partitions(case, info)
        except Mismatch as e:
            problems.append(str(e))
            continue
        want = expected_partitions(records, case["layout"], account, region)
        if set(parts) != want:
            problems.append(f"{case['name']}: ALTER partitions {sorted(parts)}, expected "
                            f"{sorted(want)}")
        problems += check_partition_locations(case, info, parts)
        plans.append((case, results, set(parts)))

    workdir = tempfile.TemporaryDirectory(prefix="athena-proof-spark-")
    started = time.monotonic()
    spark = start_spark(workdir.name)
    print(f"spark {spark.version} started in {time.monotonic() - started:.1f}s", flush=True)
    for case, results, _ in plans:
        t = time.monotonic()
        found, notes = run_spark(spark, case, results)
        problems += found
        print(f"spark  {case['name']}: {len(results)} queries, "
              f"{'OK' if not found else f'{len(found)} problem(s)'} "
              f"({time.monotonic() - t:.1f}s){''.join(f'; {n}' for n in sorted(notes))}",
              flush=True)
    spark.stop()
    workdir.cleanup()

    import duckdb

    for case, results, parts in plans:
        t = time.monotonic()
        found = run_duckdb(case, results, parts)
        problems += found
        print(f"duckdb {duckdb.__version__} {case['name']}: {len(results)} queries, "
              f"{'OK' if not found else f'{len(found)} problem(s)'} "
              f"({time.monotonic() - t:.1f}s)", flush=True)

    for case, results, _ in plans:
        for query, exp in sorted(results.items()):
            print(f"  {case['name']} {query}: {len(exp.rows)} rows, e.g. "
                  f"{exp.rows[0] if exp.rows else None}")
    if problems:
        print("\nMISMATCHES:\n" + "\n".join(problems))
        return 1
    print(f"all {sum(len(r) for _, r, _ in plans)} queries of {len(plans)} cases agree "
          f"on Spark and DuckDB")
    return 0


# ---------------------------------------------------------------------------------------
# flowlogs-reader

def cmd_flowlogs_reader(args):
    import boto3
    import flowlogs_reader

    records = read_input(args.input)
    fields = args.fields.split(",")
    # `version` is the format's version in the output, not the input's: not compared.
    compared = [f for f in fields if f != "version"]
    want = collections.Counter()
    ends = []
    for rec in records:
        view = engine_view(rec, fields, "parquet")  # '-' → None, as FlowRecord does
        want[tuple(view[f.replace("-", "_")] for f in compared)] += 1
        ends.append(int(rec["end"]))
    start_time = datetime.datetime.utcfromtimestamp(min(ends) // 86400 * 86400)
    end_time = datetime.datetime.utcfromtimestamp((max(ends) // 86400 + 2) * 86400)

    client = boto3.client(
        "s3", endpoint_url=args.endpoint, region_name=args.region,
        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    reader = flowlogs_reader.S3FlowLogsReader(
        args.location, start_time=start_time, end_time=end_time, boto_client=client,
        raise_on_error=True,
    )
    got = collections.Counter()
    statuses = collections.Counter()
    for rec in reader:
        values = []
        for f in compared:
            value = getattr(rec, f.replace("-", "_"))
            if isinstance(value, datetime.datetime):
                value = calendar.timegm(value.utctimetuple())
            values.append(value)
        got[tuple(values)] += 1
        statuses[rec.log_status] += 1
    print(f"flowlogs-reader {args.format}: {sum(got.values())} records "
          f"(log-status {dict(statuses)}), {reader.skipped_records} skipped, "
          f"{reader.bytes_processed} bytes")
    if got != want:
        missing = want - got
        extra = got - want
        print(f"MISMATCH: {sum(missing.values())} expected records not returned, "
              f"{sum(extra.values())} unexpected ones (fields {compared})")
        for row in list(missing)[:10]:
            print("  missing:", row)
        for row in list(extra)[:10]:
            print("  unexpected:", row)
        return 1
    if reader.skipped_records:
        print("MISMATCH: records were skipped")
        return 1
    print(f"flowlogs-reader returned all {sum(want.values())} records")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("gen")
    p.add_argument("out")
    p.add_argument("--records", type=int, default=6000)
    p.add_argument("--seed", type=int, default=20260512)
    p = sub.add_parser("expected")
    p.add_argument("input")
    p.add_argument("--fields", required=True)
    p.add_argument("--kind", default="text")
    p.add_argument("--account", default=ACCOUNT_A)
    p.add_argument("--region", default="ap-south-1")
    p = sub.add_parser("engines")
    p.add_argument("manifest")
    p = sub.add_parser("flowlogs-reader")
    p.add_argument("--input", required=True)
    p.add_argument("--location", required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--fields", required=True)
    p.add_argument("--format", required=True)
    args = parser.parse_args()
    if args.command == "gen":
        cmd_gen(args)
        return 0
    if args.command == "expected":
        cmd_expected(args)
        return 0
    try:
        if args.command == "engines":
            return cmd_engines(args)
        return cmd_flowlogs_reader(args)
    except Mismatch as e:
        print(f"MISMATCH: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
