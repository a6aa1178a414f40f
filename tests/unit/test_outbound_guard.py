"""The SSRF guard of tenant-supplied callback URLs (tasks.outbound), without any network.

Names are resolved by the system resolver (``localhost`` comes from /etc/hosts) or, where a
test needs a DNS answer it cannot get offline, by a resolver function the test passes in
place of the system's ``getaddrinfo``.
"""
from __future__ import annotations

import ipaddress

import pytest

from settings import SettingsError, load_settings
from tasks import outbound
from tasks.exceptions import CallbackDeliveryFailed, CallbackRefused, InvalidRequest
from tasks.outbound import allowed_networks, blocked_reason, parse_url, redact_query, resolve


def refusal(url: str, allowed: tuple[str, ...] = (), resolver: outbound.Resolver = outbound.system_resolver) -> str:
    """The message of the CallbackRefused that resolving ``url`` raises."""
    with pytest.raises(CallbackRefused) as info:
        resolve(parse_url(url), allowed_networks(allowed), resolver)
    assert info.value.param == "callback_url"
    assert isinstance(info.value, InvalidRequest)  # a 400 when it happens at submit
    return str(info.value)


@pytest.mark.parametrize(("url", "words"), [
    ("http://127.0.0.1/", "loopback"),
    ("http://127.0.0.1:6390/", "loopback"),  # the embedded Redis
    ("http://[::1]:8080/hook", "loopback"),
    ("http://10.0.0.5/", "private"),
    ("http://172.16.0.9/", "private"),
    ("http://172.31.255.254/", "private"),
    ("http://192.168.1.20/", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://169.254.170.2/v2/credentials", "link-local"),  # ECS task credentials
    ("http://[fd00:ec2::254]/latest/meta-data/", "unique local"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:127.0.0.1]/", "IPv4-mapped address of 127.0.0.1, which is loopback"),
    ("http://[::ffff:169.254.169.254]/", "IPv4-mapped address of 169.254.169.254, which is link-local"),
    ("http://[64:ff9b::a00:1]/", "NAT64 address of 10.0.0.1"),
    ("http://[2002:7f00:1::]/", "6to4 address of 127.0.0.1"),
    ("http://0.0.0.0/", "'this network'"),
    ("http://[::]/", "unspecified"),
    ("http://100.64.0.1/", "shared address space"),
    ("http://100.100.100.200/latest/meta-data/", "shared address space"),  # Alibaba Cloud's metadata
    ("http://192.0.0.192/", "special-purpose"),  # Oracle Cloud's metadata
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://192.0.2.10/", "documentation"),
    ("http://198.18.0.1/", "benchmarking"),
    # spellings of 127.0.0.1 that resolvers accept
    ("http://127.1/", "127.0.0.1 is loopback"),
    ("http://0x7f000001/", "127.0.0.1 is loopback"),
    ("http://2130706433/", "127.0.0.1 is loopback"),
    ("http://0177.0.0.1/", "127.0.0.1 is loopback"),
])
def test_blocked_addresses_are_refused(url: str, words: str) -> None:
    assert words in refusal(url)


def test_a_name_that_resolves_to_loopback_is_refused() -> None:
    # /etc/hosts: localhost is 127.0.0.1 (the system resolver, no DNS server needed)
    message = refusal("http://localhost:8354/v1/jobs")
    assert "localhost resolves to 127.0.0.1, which is loopback" in message


def test_a_name_with_one_public_and_one_private_answer_is_refused() -> None:
    answers = {"mixed.example": ["93.184.215.14", "10.1.2.3"]}
    message = refusal("https://mixed.example/hook", resolver=lambda host, port: answers[host])
    assert "10.1.2.3" in message and "private" in message


def test_public_addresses_pass() -> None:
    assert resolve(parse_url("http://8.8.8.8/")) == [ipaddress.ip_address("8.8.8.8")]
    assert resolve(parse_url("https://[2606:4700::1111]/x")) == [ipaddress.ip_address("2606:4700::1111")]
    public = {"hooks.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]}
    assert [str(ip) for ip in resolve(parse_url("https://hooks.example/"), (), lambda h, p: public[h])] == \
        public["hooks.example"]


def test_the_allow_list_lets_its_networks_through_and_nothing_else() -> None:
    allowed = allowed_networks(("127.0.0.1/32", "10.20.0.0/16"))
    assert resolve(parse_url("http://127.0.0.1:9999/"), allowed) == [ipaddress.ip_address("127.0.0.1")]
    assert resolve(parse_url("http://localhost:9999/"), allowed) == [ipaddress.ip_address("127.0.0.1")]
    assert resolve(parse_url("http://[::ffff:127.0.0.1]/"), allowed)  # the IPv4 inside is allowed
    assert resolve(parse_url("http://10.20.3.4/"), allowed)
    assert "loopback" in refusal("http://127.0.0.2/", ("127.0.0.1/32",))
    assert "link-local" in refusal("http://169.254.169.254/", ("127.0.0.1/32", "10.20.0.0/16"))
    assert "loopback" in refusal("http://[::1]/", ("127.0.0.1/32",))


def test_a_bad_allow_list_entry_allows_nothing() -> None:
    assert allowed_networks(("not-a-network", "300.1.2.3/8")) == ()
    assert "loopback" in refusal("http://127.0.0.1/", ("not-a-network",))


@pytest.mark.parametrize("bad", ["not-a-network", "300.1.2.3/8", "10.0.0.0/33", "10.20.0.0/16/8", "fd12::/129"])
def test_settings_refuse_an_allow_list_entry_that_is_no_network(bad: str) -> None:
    # ... so a typo stops the process at start instead of silently allowing nothing
    with pytest.raises(SettingsError) as info:
        load_settings({"TTS_CALLBACK_ALLOWED_NETWORKS": f"127.0.0.1/32, {bad}"})
    assert "TTS_CALLBACK_ALLOWED_NETWORKS" in str(info.value) and repr(bad) in str(info.value)


def test_settings_take_networks_hosts_and_host_bits_in_the_allow_list() -> None:
    entries = "10.20.0.0/16, 10.20.1.7/16, 192.0.2.5, fd12:3456::/48, ::1"
    settings = load_settings({"TTS_CALLBACK_ALLOWED_NETWORKS": entries})
    assert settings.callback_allowed_networks == ("10.20.0.0/16", "10.20.1.7/16", "192.0.2.5", "fd12:3456::/48", "::1")
    assert len(allowed_networks(settings.callback_allowed_networks)) == 5
    assert load_settings({"TTS_CALLBACK_ALLOWED_NETWORKS": ""}).callback_allowed_networks == ()


def test_blocked_reason_names_each_range() -> None:
    assert blocked_reason(ipaddress.ip_address("8.8.8.8")) is None
    assert blocked_reason(ipaddress.ip_address("169.254.169.254")).startswith("link-local")
    assert blocked_reason(ipaddress.ip_address("fd00:ec2::254")).startswith("private")


@pytest.mark.parametrize(("url", "words"), [
    ("ftp://example.com/hook", "scheme must be https or http"),
    ("javascript:alert(1)", "scheme must be https or http"),
    ("file:///etc/passwd", "scheme must be https or http"),
    ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme must be https or http"),
    ("example.com/hook", "scheme must be https or http"),
    ("", "scheme must be https or http"),
    ("http:///hook", "no host"),
    ("https://user:pass@example.com/", "user name or password"),
    ("https://token@example.com/", "user name or password"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://example.com:0/", "port 0"),
    ("https://exa mple.com/", "whitespace"),
    ("https://example.com/\r\nX-Injected: 1", "whitespace or a control character"),
    ("https://[fe80::1%25eth0]/", "zone index"),
    ("https://-bad-.example/", "host name is not valid"),
    ("https://a..b/", "host name is not valid"),
    ("https://example.com/" + "a" * 2100, "the limit is 2048"),
])
def test_malformed_urls_are_refused(url: str, words: str) -> None:
    with pytest.raises(CallbackRefused) as info:
        parse_url(url)
    assert words in str(info.value)
    assert "pass@" not in str(info.value)  # a password never shows in a message


def test_parse_url_keeps_what_the_request_needs() -> None:
    target = parse_url("https://Hooks.Example.com:8443/cb/path?token=abc")
    assert (target.scheme, target.host, target.port, target.path) == ("https", "hooks.example.com", 8443,
                                                                      "/cb/path?token=abc")
    assert target.host_header == "hooks.example.com:8443"
    assert parse_url("http://[2606:4700::1111]/").host_header == "[2606:4700::1111]"
    assert parse_url("http://bücher.example/").host == "xn--bcher-kva.example"
    assert parse_url("https://example.com").path == "/"


def test_a_name_that_does_not_resolve_is_a_failure_to_retry_not_a_refusal() -> None:
    def nothing(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(CallbackDeliveryFailed):
        resolve(parse_url("https://gone.example/"), (), nothing)


def test_post_refuses_before_connecting() -> None:
    attempts: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        attempts.append(host)
        return ["169.254.169.254"]

    with pytest.raises(CallbackRefused):
        outbound.post("http://metadata.example/latest/meta-data/", b"{}", {}, resolver=resolver)
    assert attempts == ["metadata.example"]  # resolved once, then refused: no connection was made


def test_redact_query() -> None:
    assert redact_query("https://example.com/hook?token=s3cret") == "https://example.com/hook?…"
    assert redact_query("https://u:p@example.com/a#frag") == "https://example.com/a#…"
    assert redact_query("https://example.com/a") == "https://example.com/a"
