"""The authorization matrix: every operation x {owner, another user, admin, no credentials, bad password}.

Each cell is written out literally below (not derived from the code's rules). "ok" means the call succeeds;
otherwise the cell names the fault code. The objects are alice's: alice is the owner, bob another user,
root the admin. Cells run column by column in the order other, none, bad, owner, admin, so that a
destructive call by the owner or the admin comes last for its operation; destructive operations come last.
"""

from __future__ import annotations

import pytest
import zeep

from tests.api.helpers import EXAMPLES, fault_code

pytestmark = pytest.mark.slow  # every test here talks to a `broker serve` process

OK = "ok"
NF, NA, IC = "Client.NotFound", "Client.NotAuthorized", "Client.InvalidCredentials"
#: the admin's call passes authorization and reaches argument checking (its selection "<c/>" is not valid)
IA = "Client.InvalidArgument"

#: operation -> expected result for (owner, other, admin, no credentials, bad password)
MATRIX = {
    "submit":               (OK, NA, OK, IC, IC),
    "getDescriptorAsXml":   (OK, NF, OK, IC, IC),
    "getWorkflowAsXml":     (OK, NF, OK, IC, IC),
    "getNodeAsXml":         (OK, NF, OK, IC, IC),
    "getStateForUser":      (OK, NA, OK, IC, IC),
    "getStatusInfoForUser": (OK, NA, OK, IC, IC),
    "getStatusInfoForWorkflow": (OK, NF, OK, IC, IC),
    "getStatusInfoForId":   (OK, NF, OK, IC, IC),
    "getStatusInfo":        (OK, OK, OK, IC, IC),
    "updateNodeStatus":     (IC, IC, IC, IC, IC),
    "archiveWorkflowsTo":   (NA, NA, IA, IC, IC),
    "cancel":               (OK, NF, OK, IC, IC),
    "restart":              (OK, NF, OK, IC, IC),
    "getUserInfo":          (NA, NA, OK, IC, IC),
    "getServiceState":      (NA, NA, OK, IC, IC),
    "getHosts":             (NA, NA, OK, IC, IC),
    "deleteAllBefore":      (NA, NA, OK, IC, IC),
    "delete":               (NA, NA, OK, IC, IC),
    "deleteAllForUser":     (OK, NA, OK, IC, IC),
    "deleteAllCompleted":   (NA, NA, OK, IC, IC),
}
#: the core operations the admin service offers too (IBroker extends IBrokerCore) that differ there: admins only
AT_ADMIN = {
    "cancel":               (NA, NA, OK, IC, IC),
    "restart":              (NA, NA, OK, IC, IC),
    "getStateForUser":      (NA, NA, OK, IC, IC),
}
#: who calls, per column: (user name, password); None: no credentials
CALLERS = {"owner": ("alice", None), "other": ("bob", None), "admin": ("root", None), "none": (None, None),
           "bad password": ("alice", "wrong")}
COLUMNS = ("owner", "other", "admin", "none", "bad password")
ORDER = ("other", "none", "bad password", "owner", "admin")
ADMIN_OPERATIONS = {"getUserInfo", "getServiceState", "getHosts", "deleteAllBefore", "delete", "deleteAllCompleted"}


def test_the_matrix_names_every_operation_of_both_wsdls(server):
    operations = set()
    for path in ("/broker", "/admin"):
        for service in server.client(path).wsdl.services.values():
            for port in service.ports.values():
                operations |= set(port.binding._operations)
    assert operations == set(MATRIX)


def test_every_cell_of_the_authorization_matrix(server):
    hello = (EXAMPLES / "hello.xml").read_text(encoding="utf-8")
    target = server.core("alice").submit({"workflowContent": hello})
    server.wait_state(target.id, "succeeded")
    node_id = server.node(target.id, "hello").id
    arguments = {
        "submit": ({"workflowContent": hello, "user": "alice"},),
        "getDescriptorAsXml": (target.id,), "getWorkflowAsXml": (target.id,), "getNodeAsXml": (node_id,),
        "getStateForUser": ("alice",), "getStatusInfoForUser": ("alice", 0),
        "getStatusInfoForWorkflow": (target.id, 0),
        "getStatusInfoForId": (target.globalId,), "getStatusInfo": (0,),
        "updateNodeStatus": (1, "RUNNING", []), "archiveWorkflowsTo": ("file:///tmp/a", "<c/>"),
        "getUserInfo": (), "getServiceState": (), "getHosts": (), "cancel": (target.globalId,), "restart": (target.globalId,),
        "deleteAllBefore": (0,), "delete": (target.globalId,), "deleteAllForUser": ("alice",),
        "deleteAllCompleted": (),
    }
    failures = []
    cells = [(operation, row, "/admin" if operation in ADMIN_OPERATIONS else "/broker")
             for operation, row in MATRIX.items()]
    cells[-6:-6] = [(operation, row, "/admin") for operation, row in AT_ADMIN.items()]  # before the deletes
    for operation, row, path in cells:
        expected = dict(zip(COLUMNS, row))
        if operation == "delete":  # the admin's delete must find the workflow: resubmit one to delete
            fresh = server.core("alice").submit({"workflowContent": hello})
            server.wait_state(fresh.id, "succeeded")
            arguments["delete"] = (fresh.globalId,)
        for column in ORDER:
            user, password = CALLERS[column]
            service = server.client(path, user, password).service
            try:
                getattr(service, operation)(*arguments[operation])
                got = OK
            except zeep.exceptions.Fault as fault:
                got = str(fault.code).split(":")[-1]
            if got != expected[column]:
                failures.append(f"{operation} at {path} as {column}: expected {expected[column]}, got {got}")
    assert not failures, "\n".join(failures)


def test_another_user_s_events_never_show_in_their_history(server):
    mine = server.core("alice").submit({"workflowContent": (EXAMPLES / "hello.xml").read_text(encoding="utf-8")})
    server.wait_state(mine.id, "succeeded")
    bob_events = server.core("bob").getStatusInfo(0) or []
    assert all(e.workflowGlobalId != mine.globalId for e in bob_events)
    root_events = server.core("root").getStatusInfo(0) or []
    assert any(e.workflowGlobalId == mine.globalId for e in root_events)


def test_http_basic_and_a_username_token_are_both_accepted_and_must_agree(server):
    import warnings

    from zeep.wsse.username import UsernameToken

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token_only = zeep.Client(server.base + "/broker?wsdl", wsse=UsernameToken("alice", "alice-pw"))
        assert token_only.service.getStateForUser(None).user == "alice"
        import requests
        from zeep.transports import Transport

        session = requests.Session()
        session.auth = ("bob", "bob-pw")
        both = zeep.Client(server.base + "/broker?wsdl", wsse=UsernameToken("alice", "alice-pw"),
                           transport=Transport(session=session))
    with pytest.raises(zeep.exceptions.Fault) as caught:
        both.service.getStateForUser(None)
    assert fault_code(caught) == IC
