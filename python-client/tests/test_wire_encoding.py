"""The hand-encoded hot-path requests read back, through protobuf, as the messages protobuf would
build; reply_code reads a Reply's code as protobuf does. No daemon needed."""

import pytest

from shmbroker import _connection as c
from shmbroker._wire import pb
from shmbroker.errors import Code

IDS = [0, 1, 127, 128, 300, 2**32, (1 << 63) | 5, 2**64 - 1]
NAMES = ["a", "auto/123-4-abcdefabcdef", "x" * 255, "été/ü"]


@pytest.mark.parametrize("aid", IDS)
@pytest.mark.parametrize("ticket", IDS)
def test_ticket(aid, ticket):
    want = pb.Request()
    want.ticket.attachment_id = aid
    want.ticket.ticket = ticket
    got = pb.Request.FromString(c.encode_ticket(aid, ticket))
    assert got == want and got.WhichOneof("body") == "ticket"


@pytest.mark.parametrize("aid", IDS)
@pytest.mark.parametrize("ticket", IDS)
def test_riding_tickets(aid, ticket):
    # Appended to a create, as a spare's create carries a pickled array's ticket.
    want = pb.Request.FromString(c.encode_create_named("spare", b""))
    want.tickets.add(attachment_id=aid, ticket=ticket)
    want.tickets.add(attachment_id=1, ticket=2)
    got = pb.Request.FromString(
        c.encode_create_named("spare", b"") + c.encode_riding_ticket(aid, ticket)
        + c.encode_riding_ticket(1, 2)
    )
    assert got == want and got.WhichOneof("body") == "create"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("writable", [False, True])
@pytest.mark.parametrize("ticket,aid", [(1, (1 << 63) | 1), (2**64 - 1, 2**64 - 1), (777, 0)])
def test_attach_by_ticket(name, writable, ticket, aid):
    want = pb.Request()
    a = want.attach
    a.name = name
    a.access = pb.READ_WRITE if writable else pb.READ_ONLY
    a.ticket = ticket
    a.attachment_id = aid
    a.by_ticket = True
    payload = c.encode_attach(name, writable, ticket=ticket, attachment_id=aid, by_ticket=True)
    got = pb.Request.FromString(payload)
    assert got == want
    # With the place the bytes are read at (offset 0 is the field's default: left out).
    for region, offset in [(1, 0), (2**40, 4096), (2**64 - 1, 2**63)]:
        a.expect_region_id, a.expect_offset = region, offset
        payload = c.encode_attach(name, writable, ticket=ticket, attachment_id=aid,
                                  by_ticket=True, expect=(region, offset))
        assert pb.Request.FromString(payload) == want


SHAPES = [(), (0,), (1,), (3, 2**40, 0), (2**64 - 1,), tuple(range(32))]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("mode", [0, 0o600, 0xFFFFFFFF])
@pytest.mark.parametrize("lifetime", [pb.PERSISTENT, pb.REFCOUNT])
@pytest.mark.parametrize("ttl", [None, 1, 2**40])
def test_create(shape, fortran, mode, lifetime, ttl):
    want = pb.Request()
    cr = want.create
    cr.name = "auto/1-2-abc"
    cr.dtype = "<M8[ns]"
    cr.shape.extend(shape)
    cr.order = pb.ORDER_F if fortran else pb.ORDER_C
    cr.mode = mode  # optional: present even when 0
    cr.lifetime = lifetime
    if ttl is not None:
        cr.ttl_ms = ttl
    tail = c.create_tail("<M8[ns]", shape, fortran, mode, lifetime, ttl)
    got = pb.Request.FromString(c.encode_create_named("auto/1-2-abc", tail))
    assert got == want and got.create.HasField("mode")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("attrs", [None, {}, {"k": "v"}, {"": "", "été": "x" * 300, "b": "ü"}])
def test_create_names_and_attrs(name, attrs):
    want = pb.Request()
    cr = want.create
    cr.name = name
    cr.dtype = "|u1"
    cr.shape.append(7)
    cr.mode = 0o644
    for k, v in (attrs or {}).items():
        cr.attrs[k] = v
    tail = c.create_tail("|u1", (7,), False, 0o644, pb.PERSISTENT, None, attrs)
    assert pb.Request.FromString(c.encode_create_named(name, tail)) == want


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("writable", [False, True])
@pytest.mark.parametrize("owner", [None, 0, 65534, 2**32 - 1])
@pytest.mark.parametrize("wait", [None, 1, 86400000])
@pytest.mark.parametrize("sealed", [False, True])
def test_attach(name, writable, owner, wait, sealed):
    want = pb.Request()
    a = want.attach
    a.name = name
    a.access = pb.READ_WRITE if writable else pb.READ_ONLY
    if owner is not None:
        a.owner_uid = owner  # optional: present even when 0 (root)
    if wait is not None:
        a.wait_ms = wait
    a.sealed = sealed
    got = pb.Request.FromString(c.encode_attach(name, writable, owner, wait, sealed))
    assert got == want and got.attach.HasField("owner_uid") == (owner is not None)


@pytest.mark.parametrize("ticket", [0, 5, 2**64 - 1])
def test_attach_with_a_ticket(ticket):
    want = pb.Request()
    want.attach.name = "n"
    want.attach.ticket = ticket
    assert pb.Request.FromString(c.encode_attach("n", False, ticket=ticket)) == want


@pytest.mark.parametrize("name", NAMES)
def test_unlink(name):
    want = pb.Request()
    want.unlink.name = name
    got = pb.Request.FromString(c.encode_unlink(name))
    assert got == want and got.WhichOneof("body") == "unlink"


def _reply(code, message="", attach=False):
    r = pb.Reply()
    r.code = code
    r.message = message
    if attach:
        r.attach.attachment_id = 2**64 - 1
        r.attach.info.name = "n"
    else:
        r.empty.SetInParent()
    return r.SerializeToString()


@pytest.mark.parametrize("code", [Code.OK, Code.NOT_FOUND, Code.RESOURCE_EXHAUSTED])
@pytest.mark.parametrize("attach", [False, True])
def test_reply_code(code, attach):
    data = _reply(code, "" if code == Code.OK else "why", attach)
    assert c.reply_code(data) == code


def test_reply_code_of_a_field_order_protobuf_accepts():
    # code after the body: still found (protobuf does not promise field order)
    data = _reply(Code.OK, attach=True) + b"\x08" + bytes([int(Code.NOT_FOUND)])
    assert pb.Reply.FromString(data).code == Code.NOT_FOUND
    assert c.reply_code(data) == Code.NOT_FOUND


@pytest.mark.parametrize(
    "data", [b"\x08", b"\x22\x05ab", b"\x0f", b"\x08" + b"\xff" * 10 + b"\x01"]
)
def test_reply_code_of_a_malformed_reply_is_none(data):
    assert c.reply_code(data) is None
