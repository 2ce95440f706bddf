"""Template environment: filters for IP arithmetic and MAC formats, StrictUndefined errors that
name template, line and node, and the kernel command line contract."""

from __future__ import annotations

import pytest

from labs.site import node, node_of, site_yaml
from provisioner.inventory import parse_text
from provisioner.render.context import (
    PER_NODE,
    RenderError,
    compile_template,
    environment,
    reads,
    render,
)
from provisioner.render.pxe import kernel_cmdline

INV = site_yaml(
    [
        node("c01", "10.55.0.21", "52:54:00:AB:cd:01", vars={"debug": 1}),  # MAC case: normalized
        node("c02", "10.55.0.22", "52:54:00:ab:cd:02"),
    ],
    {"default": {"image": "rocky9", "kernel_args": ["console=ttyS0", "rd.debug=0"]}},
    name="ctx",
    domain="ctx.cluster",
    subnet="10.55.0.0/24",
    interface=None,
    ports={"http": 8080},
)


def rendered(text: str, **ctx) -> str:
    env = environment()
    return render(compile_template(env, text, "t.j2"), ctx, "n")


@pytest.mark.parametrize(
    "expr, out",
    [
        ("'10.0.0.5' | ip_add(3)", "10.0.0.8"),
        ("'10.0.0.250/24' | ip_add(10)", "10.0.1.4/24"),
        ("'10.0.0.12' | ip_offset('10.0.0.0/24')", "12"),
        ("'10.0.0.0/24' | ip_nth(-2)", "10.0.0.254"),
        ("'10.0.0.0/22' | prefixlen", "22"),
        ("'10.0.0.0/22' | netmask", "255.255.252.0"),
        ("'10.0.1.7' | with_prefix('10.0.0.0/22')", "10.0.1.7/22"),
        ("'10.0.1.7' | reverse_pointer", "7.1.0.10.in-addr.arpa"),
        ("'52:54:00:AB:CD:EF' | mac_colon", "52:54:00:ab:cd:ef"),
        ("'5254.00ab.cdef' | mac_hyphen", "52-54-00-ab-cd-ef"),
        ("'52-54-00-ab-cd-ef' | mac_bare", "525400abcdef"),
        ("'52:54:00:ab:cd:ef' | mac_upper", "52:54:00:AB:CD:EF"),
        ("'52:54:00:ab:cd:ef' | mac_pxelinux", "01-52-54-00-ab-cd-ef"),
    ],
)
def test_filters(expr, out):
    assert rendered("{{ " + expr + " }}") == out


def test_bad_filter_input_is_a_render_error_with_line():
    with pytest.raises(RenderError) as err:
        rendered("ok\n{{ 'zz:zz' | mac_colon }}\n")
    assert err.value.line == 2 and "not a MAC" in str(err.value)


def test_strict_undefined_names_template_line_and_node():
    env = environment()
    t = compile_template(env, "a\nb\n{% for x in items %}{{ x.nope }}{% endfor %}\n", "overlay:etc/x.j2")
    with pytest.raises(RenderError) as err:
        render(t, {"items": [{"a": 1}]}, "c07")
    assert (err.value.template, err.value.line, err.value.node) == ("overlay:etc/x.j2", 3, "c07")
    assert str(err.value).startswith("overlay:etc/x.j2:3: undefined variable") and "(node c07)" in str(err.value)


def test_block_tags_leave_no_blank_lines():
    assert rendered("{% for i in [1, 2] %}\nline {{ i }}\n{% endfor %}\nend\n") == "line 1\nline 2\nend\n"


def uses_node(env, source, name):
    return bool(reads(env, source, name) & PER_NODE)


def test_per_node_detection():
    env = environment()
    assert not uses_node(env, "{% for n in nodes %}{{ n.name }}{% endfor %}{{ cluster.name }}", "t")
    assert uses_node(env, "{{ node.name }}", "t")
    assert uses_node(env, "{{ vars.x | default(1) }}", "t")
    assert uses_node(env, "{{ facts.cpus }}", "t")


def test_kernel_cmdline_follows_the_contract():
    inv = parse_text(INV, "cluster.yaml")
    c01, c02 = node_of(inv, "c01"), node_of(inv, "c02")
    assert kernel_cmdline(inv.cluster, c02, "v7") == (
        "provisioner.node=c02 provisioner.root=nfs:10.55.0.1:/images/rocky9/versions/v7/rootfs provisioner.nfsvers=4.2 "
        "provisioner.overlay=http://10.55.0.1:8080/overlays/c02.cpio.gz "
        "provisioner.report=http://10.55.0.1:8080/api/v1 console=ttyS0 rd.debug=0"
    )
    # an image with no version yet: the current one's root, through its symlink
    assert "provisioner.root=nfs:10.55.0.1:/images/rocky9/current/rootfs " in kernel_cmdline(inv.cluster, c02)
    assert "provisioner.debug=1 console=ttyS0" in kernel_cmdline(inv.cluster, c01)
    assert "provisioner.debug" not in kernel_cmdline(inv.cluster, c01, debug=False)
    assert "provisioner.debug=1" in kernel_cmdline(inv.cluster, c02, debug=True)
