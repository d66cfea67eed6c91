"""The wire types of the API (spyne ComplexModels), separate from the ORM models on purpose.

All types live in one versioned namespace, :data:`TYPES_NS`, shared by both WSDLs. Integers are
``xs:int`` unless they are event ids or times, which are ``xs:long``: event ids are 64-bit in the database,
a deliberate widening of the Java broker's ``Integer lastId``. Times are ``xs:dateTime`` in UTC. Arrays
are unwrapped repeated elements (``maxOccurs="unbounded"``), like JAX-WS; an empty array comes back as no
element at all (zeep shows it as None).
"""

from __future__ import annotations

from spyne import Array, Boolean, ComplexModel, DateTime, Double, Fault, Integer32, Integer64, Unicode

# spyne caps an xs:int's text at ceil(log10(2**32)) = 10 characters, one short of "-2147483648" (a sign and
# ten digits): the smallest xs:int would be refused as invalid before any operation could answer it
Integer32.Attributes.max_str_len = 11

#: the namespace of every type; the version changes when a type changes incompatibly
TYPES_NS = "urn:workflow-broker:types:v1"
#: the namespaces of the two services (and of their faults' detail)
CORE_NS = "urn:workflow-broker:core:v1"
ADMIN_NS = "urn:workflow-broker:admin:v1"


def fault_class(namespace: str) -> type[Fault]:
    """The declared fault of a service: ``<BrokerFault><code/><problem/>*</BrokerFault>`` in its namespace.

    One class per service: spyne puts a fault type into the namespace of the first application that uses
    it, so sharing one class would move it out of the second service's namespace.
    """
    return type("BrokerFault", (Fault,), {
        "__namespace__": namespace, "__type_name__": "BrokerFault",
        "_type_info": [("code", Unicode(min_occurs=1, nillable=False)), ("problem", Unicode(max_occurs="unbounded"))],
    })


class _Model(ComplexModel):
    __namespace__ = TYPES_NS


class Property(_Model):
    """A name and a value: an output property (the value is JSON text) or an event property."""

    _type_info = [
        ("name", Unicode(min_occurs=1, nillable=False)),
        ("value", Unicode),
    ]


class BrokerSubmission(_Model):
    """A workflow to run. Non-null fields override the same fields of the description."""

    _type_info = [
        #: ERROR, INFO, STATUS, PROGRESS or DEBUG: which events are published on the bus
        ("eventLevel", Unicode),
        ("experimentId", Unicode),
        #: the client's request id: submitting it again returns the same handle
        ("id", Unicode),
        #: higher runs first
        ("priority", Integer32),
        #: a bus destination that also receives the workflow's metadata events
        ("publishMetadataTo", Unicode),
        #: when the client submitted it (informational; the broker records its own acceptance time)
        ("timeSubmitted", DateTime),
        #: who the workflow belongs to: the caller when null; another user needs the admin role
        ("user", Unicode),
        #: the description (XML text); or ``workflowUrl``
        ("workflowContent", Unicode),
        #: where to fetch the description from, within ``[api] workflow_urls``
        ("workflowUrl", Unicode),
        #: the user's label for the workflow, unique per user
        ("workflowId", Unicode),
        # a widening of the Java BrokerSubmission (optional fields at the end: existing clients are unaffected)
        #: the name of a stored workflow (``broker workflow add``) to run, instead of workflowContent/workflowUrl
        ("storedName", Unicode),
        #: its version (default: the newest)
        ("storedVersion", Integer32),
        #: values for the workflow's declared parameters, one element per argument (a file argument's value
        #: is the file's content)
        ("argument", Property.customize(min_occurs=0, max_occurs="unbounded")),
    ]


class SubmissionHandle(_Model):
    """The accepted workflow: durable once the call returned."""

    _type_info = [
        ("globalId", Unicode(min_occurs=1, nillable=False)),
        ("id", Integer32(min_occurs=1, nillable=False)),
        ("label", Unicode),
        ("requestId", Unicode),
    ]


class EstimatedEnd(_Model):
    """When a running workflow or node should end, from the durations of earlier attempts of the same nodes
    (same workflow name and node path, sweep indexes ignored) and the run's pace: a p10-p90 interval."""

    _type_info = [
        ("p10", DateTime(min_occurs=1, nillable=False)),
        #: the most likely end (median)
        ("p50", DateTime(min_occurs=1, nillable=False)),
        ("p90", DateTime(min_occurs=1, nillable=False)),
        #: how many earlier attempts the estimate read
        ("basis", Integer32(min_occurs=1, nillable=False)),
    ]


class StatusInfo(_Model):
    """One event of the history, or (getStatusInfoForId) the current status of a workflow or node."""

    _type_info = [
        #: 64-bit event id (xs:long); page with lastId = the largest id seen
        ("eventId", Integer64(min_occurs=1, nillable=False)),
        ("time", DateTime),
        #: WORKFLOW_SUBMITTED, WORKFLOW_STATE, NODE_STATE, NODE_PROGRESS, NODE_OUTPUT, ...
        ("type", Unicode),
        #: ERROR, INFO, STATUS, PROGRESS or DEBUG
        ("level", Unicode),
        #: the new (or current) state, lower case
        ("state", Unicode),
        #: the workflow's or the node's global id
        ("globalId", Unicode),
        ("workflowId", Integer32),
        ("workflowGlobalId", Unicode),
        #: the node's path in the workflow; null for a workflow
        ("nodePath", Unicode),
        #: who caused it: submission, monitoring, elf, user:<name>, admin:<name>, ...
        ("actor", Unicode),
        ("message", Unicode),
        #: percent
        ("progress", Double),
        ("properties", Array(Property, wrapped=False)),
        #: getStatusInfoForId asked with estimate=true only, of a running workflow or a node in flight with
        #: something to estimate from; absent otherwise (a documented widening: optional, and only sent to
        #: clients that ask, so clients made from the earlier WSDL never see it)
        ("estimatedEnd", EstimatedEnd),
    ]


class StateCount(_Model):
    """How many workflows or nodes are in one state."""

    _type_info = [
        ("state", Unicode(min_occurs=1, nillable=False)),
        ("count", Integer32(min_occurs=1, nillable=False)),
    ]


class HostJobs(_Model):
    """A host and the nodes in flight there."""

    _type_info = [
        ("host", Unicode(min_occurs=1, nillable=False)),
        ("jobs", Integer32(min_occurs=1, nillable=False)),
    ]


class HostInfo(_Model):
    """A host of the catalogue: its tags, the most one node may ask for there, and its nodes in flight."""

    _type_info = [
        ("name", Unicode(min_occurs=1, nillable=False)),
        #: local, ssh, slurm, pbs or moab
        ("launcher", Unicode(min_occurs=1, nillable=False)),
        ("tags", Array(Unicode, wrapped=False)),
        #: most jobs in flight at once; 0: no per-host limit
        ("maxJobs", Integer32(min_occurs=1, nillable=False)),
        ("inFlight", Integer32(min_occurs=1, nillable=False)),
        #: nodes naming no host run here
        ("default", Boolean(min_occurs=1, nillable=False)),
        #: the limits of one node; absent: none
        ("limitNodes", Integer32),
        ("limitCores", Integer32),
        ("limitMemoryBytes", Integer64),
        ("limitWalltimeSeconds", Double),
    ]


class AggregateSummary(_Model):
    """Workflows and nodes by state; for the service also hosts, outbox backlog and uptime."""

    _type_info = [
        #: the user summarised; null for the whole service
        ("user", Unicode),
        ("time", DateTime),
        ("workflows", Array(StateCount, wrapped=False)),
        #: work-carrying nodes (execute nodes, sweeps not yet expanded) by state
        ("nodes", Array(StateCount, wrapped=False)),
        ("hosts", Array(HostJobs, wrapped=False)),
        #: events waiting to be published on the bus
        ("outboxBacklog", Integer64),
        ("uptimeSeconds", Double),
        ("version", Unicode),
    ]


class UserSubmissions(_Model):
    """One user and their workflows by state."""

    _type_info = [
        ("user", Unicode(min_occurs=1, nillable=False)),
        ("admin", Boolean),
        ("workflows", Array(StateCount, wrapped=False)),
        ("total", Integer32),
        ("lastSubmitted", DateTime),
    ]
