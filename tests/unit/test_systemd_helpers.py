from dbus_fast import Variant

from babysit.executors.systemd.manager import typed_properties, unit_path, unwrap


def test_unit_path_escapes_like_systemd() -> None:
    assert unit_path("babysit-x.service") == "/org/freedesktop/systemd1/unit/babysit_2dx_2eservice"
    assert unit_path("a_b@1.service") == "/org/freedesktop/systemd1/unit/a_5fb_401_2eservice"


def test_unwrap_reaches_nested_variants() -> None:
    value = {"a": Variant("t", 5), "b": Variant("av", [Variant("s", "x")]), "c": [Variant("b", True)]}
    assert unwrap(value) == {"a": 5, "b": ["x"], "c": [True]}


def test_typed_properties_use_systemd_signatures() -> None:
    (mem, cmd) = typed_properties({"MemoryMax": 1 << 20, "ExecStart": [("/bin/true", ["/bin/true"], False)]})
    assert mem == ("MemoryMax", Variant("t", 1 << 20))
    assert cmd[1].signature == "a(sasb)"
