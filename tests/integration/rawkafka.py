"""rawkafka - hand-built Kafka requests for what no client library will send: record batches
a consumer cannot read (a wrong CRC, an unknown format version). Used by
test_pipeline_edges.py.

    error, base = produce_batches("127.0.0.1", port, "chat.requests", 0,
                                  [batch(b"a", value_a, records_claimed=2),
                                   batch(b"b", value_b, base_offset=1, magic=3)])

kafka-mock (librdkafka 2.0.2's mock cluster) stores the records of one Produce request as
one message set, checking only the first batch (its format version, the record count it
announces) and no CRC, and returns the whole set to a fetch. librdkafka 2.0.2 reports a
batch of an unknown version as a consumer error at its offset and fetches on from the next
offset: the next record produced is delivered, the unreadable one is skipped. (A batch with
a wrong CRC, by contrast, stops the reading of the set and is fetched again.)
"""

import socket
import struct


def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _varint(n):
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])


def batch(key, value, base_offset=0, records_claimed=1, corrupt=False, magic=2):
    """One record batch holding one record; `records_claimed` is the count its header
    announces; corrupt: its CRC is wrong; magic: its format version (2 is the only one)."""
    rec = b"\x00" + _varint(0) + _varint(0) + _varint(len(key)) + key + \
        _varint(len(value)) + value + _varint(0)
    rec = _varint(len(rec)) + rec
    # attributes, lastOffsetDelta, first/max timestamp, producer id/epoch, base sequence
    covered = struct.pack(">hiqqqhii", 0, records_claimed - 1, 0, 0, -1, -1, -1,
                          records_claimed) + rec
    crc = crc32c(covered) ^ (0xFFFFFFFF if corrupt else 0)
    body = struct.pack(">ibI", 0, magic, crc) + covered
    return struct.pack(">qi", base_offset, len(body)) + body


def produce_batches(host, port, topic, partition, batches):
    """Sends one Produce (v3, acks=-1) with the batches concatenated; returns
    (error code, base offset) from the answer."""
    records = b"".join(batches)
    t = topic.encode()
    body = struct.pack(">hhi", -1, -1, 10000) + struct.pack(">ih", 1, len(t)) + t + \
        struct.pack(">iii", 1, partition, len(records)) + records
    header = struct.pack(">hhih", 0, 3, 1, 3) + b"raw"
    request = header + body
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _read(s, 4))[0]
        answer = _read(s, size)
    # correlation id, 1 topic (name), 1 partition: id, error code, base offset
    name_len = struct.unpack(">h", answer[8:10])[0]
    at = 10 + name_len + 4
    _, error, base = struct.unpack(">ihq", answer[at:at + 14])
    return error, base


def _read(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data
