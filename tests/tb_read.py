#!/usr/bin/env python3
"""tb_read.py EVENTS_FILE — read a TensorBoard event file with the standard library only: check every record's
framing and masked CRC-32C, decode the tensorflow.Event fields the trainer writes (wall_time, step, file_version,
summary values), and print one JSON object per scalar: {"step": S, "tag": T, "value": V, "wall_time": W}.
Exit 1 (one line) on a bad length, CRC or field. Used by tests/cli_log.sh; TensorBoard's own reader is tried there
too when the tensorboard package is installed."""
import json
import struct
import sys


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(data):
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return v, i


def fields(b):
    """(field number, wire type, value) of a protobuf message: varint -> int, 64/32-bit -> raw bytes, len -> bytes."""
    i = 0
    while i < len(b):
        key, i = varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(b, i)
        elif wt == 1:
            v, i = b[i:i + 8], i + 8
        elif wt == 5:
            v, i = b[i:i + 4], i + 4
        elif wt == 2:
            n, i = varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError(f"wire type {wt}")
        yield num, wt, v


def main():
    data = open(sys.argv[1], "rb").read()
    i = n = 0
    version = None
    while i < len(data):
        if len(data) - i < 12:
            sys.exit(f"record {n}: truncated header")
        head = data[i:i + 8]
        (length,) = struct.unpack("<Q", head)
        (hcrc,) = struct.unpack("<I", data[i + 8:i + 12])
        if hcrc != masked(head):
            sys.exit(f"record {n}: length CRC mismatch")
        body = data[i + 12:i + 12 + length]
        if len(body) != length or len(data) < i + 16 + length:
            sys.exit(f"record {n}: truncated data")
        (dcrc,) = struct.unpack("<I", data[i + 12 + length:i + 16 + length])
        if dcrc != masked(body):
            sys.exit(f"record {n}: data CRC mismatch")
        wall, step = None, 0
        for num, wt, v in fields(body):
            if num == 1 and wt == 1:
                (wall,) = struct.unpack("<d", v)
            elif num == 2 and wt == 0:
                step = v
            elif num == 3 and wt == 2:
                version = v.decode()
            elif num == 5 and wt == 2:
                for snum, swt, value in fields(v):
                    tag, val = None, None
                    for vnum, vwt, x in fields(value):
                        if vnum == 1:
                            tag = x.decode()
                        elif vnum == 2 and vwt == 5:
                            (val,) = struct.unpack("<f", x)
                    print(json.dumps({"step": step, "tag": tag, "value": val, "wall_time": wall}))
        i += 16 + length
        n += 1
    if version != "brain.Event:2":
        sys.exit(f"no file_version record (got {version!r})")


if __name__ == "__main__":
    main()
