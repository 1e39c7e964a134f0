"""hapax/ports.py: every port `hapax serve` opens, named by the key that sets it, and which are taken."""

from __future__ import annotations

import socket

from control_plane.config import Http3Config, ServerConfig
from hapax import wire
from hapax.ports import GatewayPort, PortInUse, gateway_ports, taken


def keys(ports: list[GatewayPort]) -> dict[str, int]:
    return {port.key: port.number for port in ports}


def test_every_port_is_named_by_its_key_and_the_command_line_wins():
    server = ServerConfig(port=8080, metrics_port=9464, admin_port=9901)

    assert keys(gateway_ports(server)) == {"server.port": 8080, "server.metrics_port": 9464, "server.admin_port": 9901}
    assert keys(gateway_ports(server, port=7000, admin_port=7001)) == {
        "--port": 7000, "server.metrics_port": 9464, "--admin-port": 7001}


def test_http3_is_a_udp_port_of_its_own_key_or_the_listeners_number():
    shared = gateway_ports(ServerConfig(port=8443, http3=Http3Config(enabled=True)))
    own = gateway_ports(ServerConfig(port=8443, http3=Http3Config(enabled=True, port=9443)))

    [udp] = [p for p in shared if p.udp]
    assert (udp.key, udp.number, udp.listener) == ("server.port", 8443, wire.HTTP3_LISTENER)
    assert [(p.key, p.number) for p in own if p.udp] == [("server.http3.port", 9443)]


def test_a_listening_port_is_taken_and_the_message_names_it_with_its_key():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        number = holder.getsockname()[1]
        ports = gateway_ports(ServerConfig(host="127.0.0.1", port=number, metrics_port=0))

        held = taken(ports)

    assert [port.key for port, _ in held] == ["server.port"]  # metrics_port 0: any free port
    assert f"TCP port {number} (server.port) on 127.0.0.1 is already in use" in str(PortInUse(held))


def test_a_free_port_is_not_taken():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        number = probe.getsockname()[1]
    assert taken(gateway_ports(ServerConfig(host="127.0.0.1", port=number, metrics_port=0))) == []


def test_a_url_on_every_interface_says_so_and_where_a_client_connects():
    from hapax.supervisor import reach_note, url_host

    assert reach_note("0.0.0.0", "http://0.0.0.0:8080/v1") == " (all interfaces; e.g. http://127.0.0.1:8080/v1)"
    assert reach_note("::", f"http://{url_host('::')}:8080/v1") == " (all interfaces; e.g. http://[::1]:8080/v1)"
    assert reach_note("10.0.0.5", "http://10.0.0.5:8080/v1") == ""
