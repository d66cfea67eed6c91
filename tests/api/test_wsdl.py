"""The checked-in WSDLs are the served ones; gSOAP accepts them and a compiled C++ client calls the service.

Regenerate the checked-in files with ``broker serve --write-wsdl wsdl``.
"""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest
from lxml import etree

from tests.api.helpers import BROKER, REPO
from tests.fixtures import require

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

WSDL_DIR = REPO / "wsdl"
FILES = {"/broker": "broker-core.wsdl", "/admin": "broker-admin.wsdl"}
SOAP_ADDRESS = "{http://schemas.xmlsoap.org/wsdl/soap/}address"


def canonical(document: bytes) -> bytes:
    """C14N of a WSDL with blank text removed and every soap:address location normalised."""
    root = etree.fromstring(document, etree.XMLParser(remove_blank_text=True))
    for address in root.iter(SOAP_ADDRESS):
        address.set("location", "http://normalised/" + address.get("location").rsplit("/", 1)[-1])
    return etree.tostring(root, method="c14n")


@pytest.mark.parametrize("path", list(FILES))
def test_the_checked_in_wsdl_equals_the_served_one(server, path):
    with urllib.request.urlopen(server.base + path + "?wsdl", timeout=30) as response:
        served = response.read()
    checked_in = (WSDL_DIR / FILES[path]).read_bytes()
    assert canonical(served) == canonical(checked_in), \
        f"wsdl/{FILES[path]} is out of date: run `broker serve --write-wsdl wsdl`"
    address = etree.fromstring(served).find(f".//{SOAP_ADDRESS}").get("location")
    assert address == server.base + path  # the public URL (here: the listening address)


def test_the_regeneration_command_writes_the_checked_in_files(tmp_path):
    subprocess.run([str(BROKER), "serve", "--write-wsdl", str(tmp_path)], check=True, capture_output=True,
                   timeout=120)
    for name in FILES.values():
        assert (tmp_path / name).read_bytes() == (WSDL_DIR / name).read_bytes(), name


def test_the_wsdls_declare_only_soap_1_1_and_versioned_namespaces():
    for name in FILES.values():
        text = (WSDL_DIR / name).read_text(encoding="utf-8")
        assert "soap12" not in text and "2003/05/soap-envelope" not in text
        assert "urn:workflow-broker:types:v1" in text


GSOAP_CLIENT = r"""
#include "soapIBrokerProxy.h"
#include "IBroker.nsmap"
#include <cstdio>
// gSOAP clears userid and passwd after every call: they are set again before each one
static void login(IBrokerProxy &proxy, char **argv) {
    proxy.soap->userid = argv[2];
    proxy.soap->passwd = argv[3];
}
static int failed(IBrokerProxy &proxy, int code) {
    proxy.soap_stream_fault(std::cerr);
    return code;
}
int main(int argc, char **argv) {
    IBrokerProxy proxy(SOAP_C_UTFSTRING);
    ns1__getServiceState request;
    ns1__getServiceStateResponse response;
    login(proxy, argv);
    if (proxy.getServiceState(argv[1], NULL, &request, response) != SOAP_OK) return failed(proxy, 1);
    if (response.return_ == NULL || response.return_->uptimeSeconds == NULL) return 2;
    printf("uptime %f version %s\n", *response.return_->uptimeSeconds,
           response.return_->version ? response.return_->version->c_str() : "?");
    // a core operation, which the admin service offers too (IBroker extends IBrokerCore)
    ns1__getStateForUser mine;
    ns1__getStateForUserResponse state;
    login(proxy, argv);
    if (proxy.getStateForUser(argv[1], NULL, &mine, state) != SOAP_OK) return failed(proxy, 3);
    printf("user %s\n", state.return_ && state.return_->user ? state.return_->user->c_str() : "?");
    // without login() again, the next call goes without credentials
    int status = proxy.getServiceState(argv[1], NULL, &request, response);
    printf("third call without credentials: HTTP %d\n", proxy.soap->error == 401 ? 401 : status);
    proxy.destroy();
    return 0;
}
"""


def _gsoap() -> tuple[str, str, str] | None:
    tools = [shutil.which(t) for t in ("wsdl2h", "soapcpp2", "g++")]
    return None if None in tools else tuple(tools)  # type: ignore[return-value]


def test_gsoap_accepts_the_wsdls_and_a_compiled_client_makes_two_calls_on_one_proxy(server, tmp_path):
    tools = _gsoap()
    require(tools is not None and Path("/usr/share/gsoap/import").is_dir(),
            "gSOAP (Debian packages gsoap libgsoap-dev) and g++")
    wsdl2h, soapcpp2, gxx = tools
    for name in FILES.values():
        out = subprocess.run([wsdl2h, "-o", str(tmp_path / (name + ".h")), str(WSDL_DIR / name)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    for name in FILES.values():  # soapcpp2 must accept both without a warning; the admin one is compiled
        target = tmp_path / name.removesuffix(".wsdl")
        target.mkdir()
        out = subprocess.run([soapcpp2, "-j", "-CL", "-I/usr/share/gsoap/import", "-d", str(target),
                              str(tmp_path / (name + ".h"))], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "warning" not in (out.stdout + out.stderr).lower(), out.stdout + out.stderr
    build = tmp_path / "broker-admin"
    (build / "client.cpp").write_text(GSOAP_CLIENT, encoding="utf-8")
    binary = build / "client"
    out = subprocess.run([gxx, "-o", str(binary), "-I", str(build), str(build / "client.cpp"), str(build / "soapC.cpp"),
                          str(build / "soapIBrokerProxy.cpp"), "-lgsoap++"], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = subprocess.run([str(binary), server.base + "/admin", "root", "root-pw"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("uptime ") and "version" in lines[0]
    assert lines[1:] == ["user root", "third call without credentials: HTTP 401"], run.stdout
    denied = subprocess.run([str(binary), server.base + "/admin", "alice", "alice-pw"], capture_output=True,
                            text=True, timeout=60)
    assert denied.returncode == 1 and "NotAuthorized" in denied.stderr
