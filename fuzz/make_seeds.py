#!/usr/bin/python3
"""Writes the fuzz targets' seed corpora, fuzz/corpus/<target>/, in their input formats.

Usage: fuzz/make_seeds.py   (needs protoc and Debian's python3-protobuf, as ./dev installs them)

The formats are described at the top of request_fuzzer.cc and fd_store_fuzzer.cc. The seeds are
small, valid conversations and stores that take the fuzzer past the handshake and the metadata
checks at once; they are committed, so run this again only when a format or the protocol changes.
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def load_protos():
    """The protocol's and the fd store's messages, compiled now from the .proto files."""
    out = tempfile.mkdtemp(prefix="shmbroker-seeds-")
    subprocess.run(["protoc", "-I", os.path.join(ROOT, "proto"), "-I", os.path.join(ROOT, "daemon"),
                    "--python_out", out, "shmbroker.proto", "store.proto"], check=True)
    sys.path.insert(0, out)
    import shmbroker_pb2
    import store_pb2
    shutil.rmtree(out)
    return shmbroker_pb2, store_pb2


wire, store = load_protos()

# request: records of [op][n: u16 LE][n bytes]; op bits 0-2 the connection, bits 3-4 the action.
SELF, SELF2, GROUP, STRANGER, ROOT_USER = 0, 1, 2, 3, 4
PACKET, PROTOCOL_ERROR, HANG_UP = 0, 2 << 3, 3 << 3


def record(op, payload=b""):
    return struct.pack("<BH", op, len(payload)) + payload


def request(conn, **body):
    (field, value), = body.items()
    r = wire.Request()
    getattr(r, field).CopyFrom(value)
    return record(PACKET | conn, r.SerializeToString())


def hello(conn, name="fuzz-seed"):
    return request(conn, hello=wire.Hello(protocol_version=wire.PROTOCOL_VERSION_CURRENT,
                                          client_name=name))


def create(conn, name, shape=(16,), dtype="<f8", mode=None, attrs=None, order=wire.ORDER_C):
    c = wire.CreateRequest(name=name, dtype=dtype, shape=list(shape), order=order,
                           attrs=attrs or {})
    if mode is not None:
        c.mode = mode
    return request(conn, create=c)


def attach(conn, name, access=wire.READ_ONLY):
    return request(conn, attach=wire.AttachRequest(name=name, access=access))


def detach(conn, attachment_id, region=0):
    return request(conn, detach=wire.DetachRequest(attachment_id=attachment_id,
                                                   released_region_id=region))


REQUEST_SEEDS = {
    "hello": hello(SELF),
    # Segment 1: attachment 1 (the create, region 3 read-write), 2 and 3 read-only (region 2).
    "lifecycle": b"".join([
        hello(SELF),
        create(SELF, "seed/a", shape=(4, 4), attrs={"unit": "m"}),
        attach(SELF, "seed/a"),
        attach(SELF, "seed/a", wire.READ_WRITE),
        request(SELF, stat=wire.StatRequest(name="seed/a")),
        detach(SELF, 2),
        detach(SELF, 0, region=2),
        request(SELF, unlink=wire.UnlinkRequest(name="seed/a")),
        detach(SELF, 1, region=3),
        detach(SELF, 3),
    ]),
    "list": b"".join([
        hello(SELF),
        create(SELF, "seed/x", shape=(1,), dtype="|u1"),
        create(SELF, "seed/y", shape=(2, 3), dtype="<i4", order=wire.ORDER_F),
        create(SELF, "other", shape=(0,), dtype="<M8[ns]"),
        request(SELF, list=wire.ListRequest(pattern="seed/*")),
        request(SELF, list=wire.ListRequest(start_after="seed/x")),
        request(SELF, stats=wire.StatsRequest()),
    ]),
    "purge": b"".join([
        hello(SELF),
        create(SELF, "seed/p1"),
        create(SELF, "seed/p2"),
        hello(ROOT_USER, "root"),
        request(ROOT_USER, purge=wire.PurgeRequest(all=True, dry_run=True)),
        record(HANG_UP | SELF),
        request(ROOT_USER, purge=wire.PurgeRequest(orphans=True)),
        request(ROOT_USER, purge=wire.PurgeRequest(patterns=["seed/*"], older_than_seconds=0,
                                                   owner_uid=1000, unattached=True)),
    ]),
    # Another user in the owner's group, a stranger and root against a 0640 segment; client names
    # beyond ASCII and beyond the length kept.
    "users": b"".join([
        hello(SELF),
        create(SELF, "seed/shared", shape=(8,), dtype="|u1", mode=0o640),
        hello(GROUP, "gruppe-\u00fcber-\u540d\u524d"),
        attach(GROUP, "seed/shared"),
        attach(GROUP, "seed/shared", wire.READ_WRITE),
        hello(STRANGER, "stranger-with-a-name-longer-than-the-64-bytes-the-daemon-keeps-of-it"),
        attach(STRANGER, "seed/shared"),
        request(STRANGER, unlink=wire.UnlinkRequest(name="seed/shared")),
        hello(ROOT_USER, "root"),
        attach(ROOT_USER, "seed/shared", wire.READ_WRITE),
        request(GROUP, stat=wire.StatRequest(name="seed/shared")),
    ]),
    # What ends a connection: a request before hello, a wrong version, garbage, a packet
    # Connection refused.
    "errors": b"".join([
        create(SELF, "seed/early"),
        request(SELF2, hello=wire.Hello(protocol_version=99)),
        hello(GROUP),
        record(PACKET | GROUP, b"\xff\xff\xff\xff"),
        hello(STRANGER),
        record(PROTOCOL_ERROR | STRANGER, b"\x01"),
    ]),
}


# fd_store: [n] then n entries, then [older_than: u32 LE]. An entry: [flags][id], then data
# [size: u32 LE] (flags bit 0 clear) or metadata [len: u16 LE][bytes] (bit 0 set).
def data_entry(seg_id, size):
    return struct.pack("<BBI", 0, seg_id, size)


def meta_entry(seg_id, stored):
    blob = stored.SerializeToString()
    return struct.pack("<BBH", 1, seg_id, len(blob)) + blob


def stored_segment(seg_id, name, dtype, shape, nbytes, **info):
    return store.StoredSegment(format=1, id=seg_id, info=wire.SegmentInfo(
        name=name, dtype=dtype, shape=shape, nbytes=nbytes, uid=1000, gid=1000,
        creator_pid=4242, created_unix_ns=1_700_000_000_000_000_000, mode=0o600, **info))


def journal_entry(generation, records):
    """records: ("put", id, StoredSegment) / ("delete", id) / ("raw", bytes)."""
    out = bytearray([len(records)])
    for r in records:
        if r[0] == "put":
            blob = r[2].SerializeToString()
            out += struct.pack("<BBH", 0, r[1], len(blob)) + blob
        elif r[0] == "delete":
            out += struct.pack("<BBH", 1, r[1], 0)
        else:
            out += struct.pack("<BBH", 2, 0, len(r[1])) + r[1]
    return struct.pack("<BB", 32, generation) + bytes(out)


def fd_store_seed(entries, older_than=0):
    return bytes([len(entries)]) + b"".join(entries) + struct.pack("<I", older_than)


SEG1 = stored_segment(1, "seed/a", "<f8", [4, 2], 64)
SEG2 = stored_segment(2, "seed/b", "|u1", [3, 5], 15, order=wire.ORDER_F, attrs={"k": "v"})
FD_STORE_SEEDS = {
    "one": fd_store_seed([meta_entry(1, SEG1), data_entry(1, 64)], older_than=60),
    "two": fd_store_seed([data_entry(2, 15), meta_entry(1, SEG1), data_entry(1, 64),
                          meta_entry(2, SEG2)]),
    # A lone half, a name taken twice and a size mismatch: each skipped, seed/a restored.
    "skipped": fd_store_seed([meta_entry(3, stored_segment(3, "seed/c", "<i2", [2], 4)),
                              meta_entry(1, SEG1), data_entry(1, 64),
                              meta_entry(2, stored_segment(2, "seed/a", "<f8", [4, 2], 64)),
                              data_entry(2, 64),
                              meta_entry(4, stored_segment(4, "seed/d", "<f4", [4], 16)),
                              data_entry(4, 15)]),
    # A journal: seed/b put, deleted and put again; seed/a put then torn off by raw bytes.
    "journal": fd_store_seed([journal_entry(2, [("put", 2, SEG2), ("put", 1, SEG1),
                                                ("delete", 2), ("put", 2, SEG2),
                                                ("raw", b"\x20\x00\x00\x00junk")]),
                              data_entry(1, 64), data_entry(2, 15),
                              journal_entry(1, [("put", 1, SEG1)])]),
}


def write(target, seeds):
    directory = os.path.join(CORPUS, target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{directory}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


write("request", REQUEST_SEEDS)
write("fd_store", FD_STORE_SEEDS)
