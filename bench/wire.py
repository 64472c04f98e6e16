#!/usr/bin/env python3
"""Counts what a gRPC client wrote to etcd in a pcap capture of one direction (client → etcd).

    python3 bench/wire.py CAPTURE.pcap OPS

Prints TCP segments carrying data, HTTP/2 frames by type, and both per operation (OPS is the
number of lock+unlock cycles the bench reported). Reads classic pcap (tcpdump -w) on Linux
loopback (Ethernet framing) or raw/Linux-cooked captures, IPv4 and IPv6.
"""
import struct
import sys
from collections import Counter, defaultdict

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_TYPES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS",
               5: "PUSH_PROMISE", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}


def packets(path):
    with open(path, "rb") as f:
        header = f.read(24)
        magic = struct.unpack("<I", header[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype = struct.unpack(endian + "I", header[20:24])[0]
        while True:
            record = f.read(16)
            if len(record) < 16:
                return
            _, _, caplen, _ = struct.unpack(endian + "IIII", record)
            yield linktype, f.read(caplen)


def tcp_payload(linktype, frame):
    if linktype == 1:  # Ethernet
        ethertype, offset = struct.unpack(">H", frame[12:14])[0], 14
    elif linktype == 113:  # Linux cooked
        ethertype, offset = struct.unpack(">H", frame[14:16])[0], 16
    elif linktype == 276:  # Linux cooked v2
        ethertype, offset = struct.unpack(">H", frame[0:2])[0], 20
    else:  # raw IP
        ethertype, offset = (0x86DD if frame[0] >> 4 == 6 else 0x0800), 0
    if ethertype == 0x0800:
        ihl = (frame[offset] & 0x0F) * 4
        total = struct.unpack(">H", frame[offset + 2:offset + 4])[0]
        if frame[offset + 9] != 6:
            return None
        segment = frame[offset + ihl:offset + total]
    elif ethertype == 0x86DD:
        if frame[offset + 6] != 6:
            return None
        length = struct.unpack(">H", frame[offset + 4:offset + 6])[0]
        segment = frame[offset + 40:offset + 40 + length]
    else:
        return None
    src_port = struct.unpack(">H", segment[0:2])[0]
    data_offset = (segment[12] >> 4) * 4
    return src_port, segment[data_offset:]


def main():
    path, ops = sys.argv[1], max(int(sys.argv[2]), 1)
    segments, streams, starts = 0, defaultdict(bytes), defaultdict(list)
    for linktype, frame in packets(path):
        parsed = tcp_payload(linktype, frame)
        if parsed and parsed[1]:
            segments += 1
            starts[parsed[0]].append(len(streams[parsed[0]]))
            streams[parsed[0]] += parsed[1]
    frames, requests, shapes = Counter(), Counter(), Counter()
    for port, data in streams.items():
        pos = len(PREFACE) if data.startswith(PREFACE) else 0
        # The frames that begin in each segment, to show how the writes were cut.
        bounds, shape = starts[port][1:] + [len(data)], []
        while pos + 9 <= len(data):
            while bounds and pos >= bounds[0]:
                bounds.pop(0)
                shapes[" + ".join(shape) or "(continuation)"] += 1
                shape = []
            length = int.from_bytes(data[pos:pos + 3], "big")
            kind, flags = data[pos + 3], data[pos + 4]
            name = FRAME_TYPES.get(kind, str(kind)) + (" ack" if kind == 6 and flags & 1 else "")
            if kind in (0, 1) and flags & 1:
                name += "/ES"
            frames[name] += 1
            shape.append(name)
            if kind == 0 and flags & 1:
                requests["END_STREAM on an empty DATA" if length == 0 else "END_STREAM on the message's DATA"] += 1
            pos += 9 + length
        if shape:
            shapes[" + ".join(shape)] += 1
    total = sum(frames.values())
    print(f"ops {ops}: {segments} segments ({segments / ops:.2f}/op), {total} HTTP/2 frames ({total / ops:.2f}/op)")
    for name, count in frames.most_common():
        print(f"  {name:<16} {count:>8}  {count / ops:.2f}/op")
    for name, count in sorted(requests.items()):
        print(f"  {name:<33} {count:>8}  {count / ops:.2f}/op")
    print("  segments by the frames they start (/ES = END_STREAM):")
    for shape, count in shapes.most_common(8):
        print(f"    {count / ops:5.2f}/op  {shape}")


if __name__ == "__main__":
    main()
