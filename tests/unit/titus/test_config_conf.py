"""titus.conf syntax, vhost blocks and inheritance, includes, the command line."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import pytest

from tests.unit.titus.test_config_support import DATA, basic_conf, chosen, make_cert, write
from titus.config.load import ConfigError, load_config, load_options, parse_command_line

CERT = "cert certs/example.com.crt\nkey certs/example.com.key\n"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    make_cert(tmp_path / "certs")
    make_cert(tmp_path / "certs", "www.example.com", kind="ec")
    return tmp_path


def error_of(path: Path, *overrides: tuple[str, str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return info.value


# --- titus 0.4's own example -------------------------------------------------------


def test_titus_04_example_loads(tmp_path: Path) -> None:
    example = tmp_path / "titus.conf.example"
    shutil.copy(DATA / "titus.conf.example", example)
    for stem in ("example.com", "www.example.com", "wildcard.example.com"):
        cert, _ = make_cert(tmp_path / "certs", stem)
        cert.rename(tmp_path / "certs" / f"{stem}.chained.crt")
    config = load_config(example)

    assert [(str(x.address), x.port, x.dual_stack) for x in config.listeners] == [("::", 443, True)]
    first, www, wildcard = config.vhosts
    assert first.local_address == ipaddress.ip_address("192.0.2.5")
    assert (first.backend_host, first.backend_port) == ("127.0.0.1", 6443)
    assert first.cert == tmp_path / "certs" / "example.com.chained.crt"
    assert www.sni_names == ("www.example.com",)
    assert (www.backend_port, wildcard.backend_port) == (7443, 8443)
    assert wildcard.sni_names == () and wildcard.local_address is None
    # titus 0.4's defaults, but max-children: 1000, not 0.4's 100 (docs/sizing.md)
    assert (config.min_spare_children, config.max_children) == (3, 1000)
    assert config.max_handshake_time == 10 and config.transparent == "no"
    assert config.daemon is False and config.pid_file is None
    # the user/group/chroot lines are accepted as superseded, each with a notice
    noticed = [n.message.split()[0] for n in config.notices]
    assert noticed == [
        "network-user", "network-group", "keyserver-user", "keyserver-group", "chroot"
    ]
    assert all(str(n.source.line) in str(n) for n in config.notices)
    # routing as titus 0.4 would do it
    assert chosen(config, "192.0.2.5", 443, "www.example.com") is first
    assert chosen(config, "198.51.100.1", 443, "WWW.example.com") is www
    assert chosen(config, "::ffff:198.51.100.1", 443, None) is wildcard


def test_data_file_differs_from_titus_only_in_paths_and_header() -> None:
    lines = (DATA / "titus.conf.example").read_text().splitlines()
    assert lines[0].startswith("# titus.conf.example from titus 0.4")
    assert "/etc/ssl" not in "\n".join(lines[2:])
    paths = [line.split()[1] for line in lines if line.split()[:1] in (["key"], ["cert"])]
    assert len(paths) == 6 and all(path.startswith("certs/") for path in paths)


# --- syntax --------------------------------------------------------------------------


def test_comments_blank_lines_and_trailing_whitespace(certs: Path) -> None:
    conf = write(
        certs / "t.conf",
        "# comment\n\n   \n  # indented comment\nport 443  \t\r\n" + CERT + "backend-port 80\n",
    )
    config = load_config(conf)
    assert config.listeners[0].port == 443 and config.vhosts[0].backend_port == 80


def test_crlf_line_endings(certs: Path) -> None:
    conf = certs / "t.conf"
    conf.write_bytes((f"port 443\n{CERT}backend-port 80\nvhost\n\tsni-name a.example\n")
                     .replace("\n", "\r\n").encode())
    assert load_config(conf).vhosts[0].sni_names == ("a.example",)


def test_value_is_rest_of_line_and_no_inline_comments(certs: Path) -> None:
    (certs / "my dir").mkdir()
    make_cert(certs / "my dir", "spaced")
    conf = write(
        certs / "t.conf",
        "port 443\ncert my dir/spaced.crt\nkey   my dir/spaced.key\nbackend-port 80\n",
    )
    assert load_config(conf).vhosts[0].cert == certs / "my dir" / "spaced.crt"
    write(conf, f"port 443 # https\n{CERT}backend-port 80\n")
    error = error_of(conf)
    assert str(error).startswith(f"{conf}:1: port 443 # https: ")


def test_missing_value(certs: Path) -> None:
    conf = write(certs / "t.conf", f"port 443\n{CERT}backend-port 80\ndaemon\n")
    assert str(error_of(conf)) == f"{conf}:5: daemon: missing value"


def test_not_utf8_names_the_line(certs: Path) -> None:
    conf = certs / "t.conf"
    conf.write_bytes(b"port 443\n# ok\nbackend \xff\n")
    assert str(error_of(conf)) == f"{conf}:3: not valid UTF-8"


# --- vhost blocks ----------------------------------------------------------------------


def test_vhost_block_ends_at_first_unindented_option(certs: Path) -> None:
    conf = write(
        certs / "t.conf",
        "port 443\n"
        + CERT
        + "vhost\n"
        "\tsni-name a.example\n"
        "\n"
        "# a column-0 comment does not end the block\n"
        "\tbackend-port 1001\n"
        "backend-port 2002\n"  # global again
        "vhost\n"
        "  sni-name b.example\n",
    )
    a, b = load_config(conf).vhosts
    assert (a.sni_names, a.backend_port) == (("a.example",), 1001)
    assert (b.sni_names, b.backend_port) == (("b.example",), 2002)


def test_global_lines_after_vhosts_are_still_inherited(certs: Path) -> None:
    """titus 0.4 resolved vhost defaults after reading everything."""
    conf = write(
        certs / "t.conf",
        "port 443\nvhost\n\tsni-name a.example\n" + CERT + "backend 192.0.2.9\nbackend-port 80\n",
    )
    (vhost,) = load_config(conf).vhosts
    assert (vhost.backend_host, vhost.backend_port) == ("192.0.2.9", 80)
    assert vhost.cert == certs / "certs/example.com.crt"


def test_vhost_settings_override_globals_one_by_one(certs: Path) -> None:
    conf = write(
        certs / "t.conf",
        "port 443\n" + CERT + "backend 10.0.0.1\nbackend-port 80\n"
        "ciphers ECDHE-RSA-AES256-GCM-SHA384\nhonor-client-cipher-order yes\n"
        "vhost www\n"
        "\tsni-name www.example.com\n"
        "\tcert certs/www.example.com.crt\n"
        "\tkey certs/www.example.com.key\n"
        "\tbackend-port 81\n"
        "\ttlsv1.2 no\n"
        "vhost\n",
    )
    www, other = load_config(conf).vhosts
    assert www.name == "www" and www.cert.name == "www.example.com.crt"
    assert (www.backend_host, www.backend_port) == ("10.0.0.1", 81)
    assert www.tls.min_version.name == "TLSv1_3" and other.tls.min_version.name == "TLSv1_2"
    for vhost in (www, other):
        assert vhost.tls.ciphers.startswith("ECDHE-RSA-AES256-GCM-SHA384:")
        assert vhost.tls.honor_client_cipher_order is True
    assert other.cert.name == "example.com.crt" and other.backend_port == 80


def test_no_vhost_block_means_one_catch_all_vhost(certs: Path) -> None:
    conf = basic_conf(certs)
    (vhost,) = load_config(conf).vhosts
    assert vhost.name == "default"
    assert (vhost.local_address, vhost.local_port, vhost.sni_names) == (None, None, ())


def test_with_vhost_blocks_there_is_no_implicit_catch_all(certs: Path) -> None:
    conf = basic_conf(certs, "vhost\n\tsni-name only.example\n")
    config = load_config(conf)
    assert len(config.vhosts) == 1
    assert chosen(config, "192.0.2.1", 443, "other.example") is None


def test_first_match_wins_in_file_order(certs: Path) -> None:
    conf = basic_conf(
        certs,
        "vhost one\n\tsni-name a.example\n\tbackend-port 1\n"
        "vhost two\n\tsni-name a.example\n\tsni-name b.example\n\tbackend-port 2\n"
        "vhost three\n\tbackend-port 3\n",
    )
    config = load_config(conf)
    assert [v.name for v in config.vhosts] == ["one", "two", "three"]
    assert chosen(config, "::1", 443, "a.example").backend_port == 1
    assert chosen(config, "::1", 443, "b.example").backend_port == 2
    assert chosen(config, "::1", 443, "c.example").backend_port == 3
    # "two" is reachable (b.example), so only nothing is reported as shadowed
    assert not [n for n in config.notices if "never be chosen" in n.message]


def test_shadowed_vhost_is_reported(certs: Path) -> None:
    conf = basic_conf(certs, "vhost all\nvhost late\n\tsni-name x.example\n")
    (notice,) = [n for n in load_config(conf).notices if "never be chosen" in n.message]
    assert notice.source.line == 7 and "vhost all" in notice.message


def test_vhost_name_and_derived_names(certs: Path) -> None:
    conf = basic_conf(
        certs, "vhost\n\tsni-name a.example\nvhost\n\tsni-name a.example\nvhost\n"
    )
    assert [v.name for v in load_config(conf).vhosts] == ["a.example", "a.example#2", "vhost3"]
    write(conf, conf.read_text() + "vhost same\nvhost same\n")
    assert "vhost name same is already used" in str(error_of(conf))


def test_nested_vhost_is_refused(certs: Path) -> None:
    conf = basic_conf(certs, "vhost\n\tvhost\n")
    assert str(error_of(conf)).startswith(f"{conf}:7: vhost blocks cannot be nested")


def test_indented_lines_before_any_vhost_are_global(certs: Path) -> None:
    conf = basic_conf(certs, "   max-children 7\n")
    assert load_config(conf).max_children == 7


def test_empty_sni_name_matches_clients_without_sni(certs: Path) -> None:
    conf = basic_conf(certs, 'vhost\n\tsni-name ""\n\tbackend-port 1\nvhost\n\tbackend-port 2\n')
    config = load_config(conf)
    assert config.vhosts[0].sni_names == ("",)
    assert chosen(config, "::1", 443, None).backend_port == 1
    assert chosen(config, "::1", 443, "a.example").backend_port == 2


# --- includes -----------------------------------------------------------------------------


def test_config_include_relative_to_including_file(certs: Path) -> None:
    write(certs / "sub" / "vhosts.conf", "vhost inc\n\tsni-name inc.example\n")
    conf = basic_conf(certs, "config sub/vhosts.conf\nmax-children 9\n")
    config = load_config(conf)
    assert [v.name for v in config.vhosts] == ["inc"]
    assert config.max_children == 9
    assert config.sources == (conf, certs / "sub" / "vhosts.conf")


def test_vhost_block_ends_with_its_file(certs: Path) -> None:
    write(certs / "v.conf", "vhost inc\n\tsni-name inc.example\n")
    conf = basic_conf(certs, "config v.conf\n\tbackend-port 99\n")
    (vhost,) = load_config(conf).vhosts
    assert vhost.backend_port == 99  # the indented line is global in the including file
    assert load_config(conf).vhosts[0].sni_names == ("inc.example",)


def test_config_directory_in_sorted_order_skipping_hidden_and_directories(certs: Path) -> None:
    d = certs / "titus.d"
    write(d / "20-b.conf", "vhost b\n")
    write(d / "10-a.conf", "vhost a\n")
    write(d / "3-c", "vhost c\n")
    write(d / ".hidden.conf", "this is not valid\n")
    (d / "subdir").mkdir()
    write(d / "subdir" / "x.conf", "neither is this\n")
    os.mkfifo(d / "fifo")
    conf = basic_conf(certs, "config-directory titus.d\n")
    assert [v.name for v in load_config(conf).vhosts] == ["a", "b", "c"]


def test_config_directory_errors(certs: Path) -> None:
    conf = basic_conf(certs, "config-directory nowhere\n")
    assert str(error_of(conf)) == (
        f"{conf}:6: config-directory {certs / 'nowhere'}: cannot read: No such file or directory"
    )


def test_missing_include_names_the_including_line(certs: Path) -> None:
    conf = basic_conf(certs, "\nconfig missing.conf\n")
    assert str(error_of(conf)) == (
        f"{conf}:7: config {certs / 'missing.conf'}: cannot read: No such file or directory"
    )


def test_include_of_a_directory_is_refused(certs: Path) -> None:
    (certs / "d").mkdir()
    conf = basic_conf(certs, "config d\n")
    assert str(error_of(conf)) == f"{conf}:6: config {certs / 'd'}: cannot read: not a regular file"
    os.mkfifo(certs / "fifo")
    conf = basic_conf(certs, "config fifo\n")
    assert str(error_of(conf)).endswith("fifo: cannot read: not a regular file")


def test_include_cycle_is_refused(certs: Path) -> None:
    write(certs / "a.conf", "config b.conf\n")
    write(certs / "b.conf", "\nconfig a.conf\n")
    conf = basic_conf(certs, "config a.conf\n")
    message = str(error_of(conf))
    assert message.startswith(f"{certs / 'b.conf'}:2: config {certs / 'a.conf'}: include cycle: ")
    assert message.endswith(f"{certs / 'a.conf'} -> {certs / 'b.conf'} -> {certs / 'a.conf'}")


def test_self_include_through_directory_is_a_cycle(certs: Path) -> None:
    conf = basic_conf(certs / "d", "config-directory .\n")
    assert "include cycle" in str(error_of(conf))


def test_same_file_twice_without_cycle_is_fine(certs: Path) -> None:
    write(certs / "v.conf", "vhost\n")
    conf = basic_conf(certs, "config v.conf\nconfig v.conf\n")
    assert len(load_config(conf).vhosts) == 2


def test_errors_inside_included_files_name_that_file(certs: Path) -> None:
    inc = write(certs / "inc.conf", "\n\nmax-children zero\n")
    conf = basic_conf(certs, "config inc.conf\n")
    assert str(error_of(conf)).startswith(f"{inc}:3: max-children zero: ")


def test_include_depth_is_limited(certs: Path) -> None:
    for i in range(20):
        write(certs / f"n{i}.conf", f"config n{i + 1}.conf\n")
    write(certs / "n20.conf", "")
    conf = basic_conf(certs, "config n0.conf\n")
    assert "nested too deeply" in str(error_of(conf))


# --- the command line -------------------------------------------------------------------


def test_parse_command_line() -> None:
    assert parse_command_line(["--config", "/x", "--port=8443", "--sni-name", ""]) == [
        ("config", "/x"), ("port", "8443"), ("sni-name", "")
    ]
    with pytest.raises(ConfigError, match=r"^<command line>:2: expected --option value, got 'x'$"):
        parse_command_line(["--port", "1", "x"])
    with pytest.raises(ConfigError, match=r"^<command line>:1: --port: missing value$"):
        parse_command_line(["--port"])
    with pytest.raises(ConfigError, match=r"^<command line>:1: expected --option value"):
        parse_command_line(["--", "x"])


def test_overrides_win_over_the_file(certs: Path) -> None:
    conf = basic_conf(certs, "max-children 10\n")
    config = load_config(conf, [("max-children", "20"), ("port", "8443"), ("daemon", "yes")])
    assert (config.max_children, config.listeners[0].port, config.daemon) == (20, 8443, True)


def test_titus_order_semantics_for_options_before_config(certs: Path) -> None:
    """titus 0.4 applied --options in order: one before --config loses to the file."""
    conf = basic_conf(certs, "max-children 10\n")
    before = load_options([("max-children", "20"), ("config", str(conf))])
    after = load_options([("config", str(conf)), ("max-children", "20")])
    assert (before.max_children, after.max_children) == (10, 20)
    only_before = load_options([("min-spare-children", "1"), ("config", str(conf))])
    assert only_before.min_spare_children == 1


def test_overridden_cert_is_inherited_by_vhosts(certs: Path) -> None:
    conf = basic_conf(certs, "vhost\n\tsni-name a.example\n")
    other, _ = make_cert(certs / "other", "other.example")
    overrides = [("cert", str(other)), ("key", str(other.with_suffix(".key")))]
    (vhost,) = load_config(conf, overrides).vhosts
    assert vhost.cert == other


def test_no_config_file_at_all(certs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(certs)
    config = load_options(
        [("port", "443"), ("cert", "certs/example.com.crt"), ("key", "certs/example.com.key"),
         ("backend-port", "80")]
    )
    assert config.vhosts[0].cert == certs / "certs/example.com.crt"  # relative to the cwd


def test_command_line_errors_name_the_option_position(certs: Path) -> None:
    conf = basic_conf(certs)
    with pytest.raises(ConfigError) as info:
        load_config(conf, [("port", "443"), ("sni-name", "a.example")])
    assert str(info.value) == "<command line>:3: sni-name is only valid inside a vhost block"
    with pytest.raises(ConfigError) as info:
        load_config(certs / "absent.conf")
    assert str(info.value) == (
        f"<command line>:1: config {certs / 'absent.conf'}: cannot read: No such file or directory"
    )
