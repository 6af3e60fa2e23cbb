"""testbed/measure/reach.py on loopback: an attempt says whether the destination answered, from the
source port it was given."""
import socket
import threading

from testbed.measure import reach


def test_ports_lists():
    assert reach.ports("22,8080") == [22, 8080] and reach.ports("") == []


def test_a_tcp_attempt_connects_from_its_source_port_or_says_why_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert reach.attempt("tcp", "127.0.0.1", port, 0, 1.0) is None
        assert server.accept()[1][0] == "127.0.0.1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert reach.attempt("tcp", "127.0.0.1", free, 0, 1.0) == "Connection refused"


def test_a_udp_attempt_needs_an_answer():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as deaf:
        deaf.bind(("127.0.0.1", 0))
        assert reach.attempt("udp", "127.0.0.1", deaf.getsockname()[1], 0, 0.3) == "no answer"  # heard only
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]

        def echo():
            data, peer = sink.recvfrom(64)
            sink.sendto(data, peer)
        t = threading.Thread(target=echo)
        t.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            sport = probe.getsockname()[1]
        assert reach.attempt("udp", "127.0.0.1", port, sport, 2.0) is None
        t.join()
