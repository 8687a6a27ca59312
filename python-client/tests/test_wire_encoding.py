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
    got = pb.Request.FromString(c.encode_attach_by_ticket(name, writable, ticket, aid))
    assert got == want


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("ttl", [None, 1, 2**40])
def test_create_from_tail(name, ttl):
    want = pb.Request()
    cr = want.create
    cr.name = "placeholder"
    cr.dtype = "<f8"
    cr.shape.extend([3, 2**40, 0])
    cr.order = pb.ORDER_F
    cr.mode = 0o640
    cr.lifetime = pb.REFCOUNT
    cr.attrs["k"] = "v"
    if ttl is not None:
        cr.ttl_ms = ttl
    tail = c.create_tail(cr)
    cr.name = name
    assert pb.Request.FromString(c.encode_create_named(name, tail)) == want


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
