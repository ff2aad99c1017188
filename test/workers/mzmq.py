"""What the test workers share: reading an MZMQ/1 request's meta frame, and
printing a line the tests read as it happens. The examples in
examples/python stay self-contained; these are for test/workers only."""


def meta_value(meta, name):
    """The value of the meta line name (bytes), stripped; None without one."""
    for line in meta.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep and key == name:
            return value.strip()
    return None


def meta_lines(meta):
    """Every meta line, as {name (str): value (bytes, stripped)}."""
    out = {}
    for line in meta.split(b"\r\n"):
        key, sep, value = line.partition(b":")
        if sep:
            out[key.decode()] = value.strip()
    return out


def say(*words):
    """Prints words as one line, flushed: the tests read it at once."""
    print(*words, flush=True)


def split(msg):
    """A message a ROUTER worker received, as (envelope, method, target,
    headers, meta, body), the envelope ending with its empty frame; None
    when it is not an MZMQ/1 request (six frames after the envelope, the
    first MZMQ/1)."""
    try:
        i = msg.index(b"")
    except ValueError:
        return None
    frames = msg[i + 1:]
    if len(frames) != 6 or frames[0] != b"MZMQ/1":
        return None
    return (msg[:i + 1],) + tuple(frames[1:])
