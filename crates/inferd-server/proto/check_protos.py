#!/usr/bin/env python3
"""Check inferd's .proto files against the schemas shipped in `tritonclient`.

Run with a Python that has `tritonclient[grpc]` and `grpcio-tools` installed
(optionally `grpcio-health-checking` to also check health.proto):

    /path/to/venv/bin/python crates/inferd-server/proto/check_protos.py

The protos next to this script are compiled with `sys.executable -m
grpc_tools.protoc` into a temporary descriptor set, and every file, message,
field, oneof, map entry, enum, service and method is compared with the
reference descriptors. As an extra wire-level check, a fully populated message
of every reference type is serialized by tritonclient, parsed with our schema
and re-serialized; the bytes must be identical and no field may be unknown.

Prints every difference and exits 1 if there is any, 0 otherwise.
"""

import os
import subprocess
import sys
import tempfile

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FieldDescriptor

PROTO_DIR = os.path.dirname(os.path.abspath(__file__))

# (our file name, python module holding the reference descriptor, required)
TARGETS = [
    ("model_config.proto", "tritonclient.grpc.model_config_pb2", True),
    ("grpc_service.proto", "tritonclient.grpc.service_pb2", True),
    ("health.proto", "grpc_health.v1.health_pb2", False),
]

FDP = descriptor_pb2.FieldDescriptorProto
TYPE_NAMES = {v: k for k, v in FDP.Type.items()}
LABEL_NAMES = {v: k for k, v in FDP.Label.items()}

diffs = []
notes = []


def diff(where, what):
    diffs.append(f"{where}: {what}")


def compile_ours(tmp, files):
    out = os.path.join(tmp, "ours.pb")
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        "--include_imports",
        f"--descriptor_set_out={out}",
    ] + files
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        print("protoc failed:\n" + res.stdout + res.stderr)
        sys.exit(1)
    fds = descriptor_pb2.FileDescriptorSet()
    with open(out, "rb") as f:
        fds.ParseFromString(f.read())
    return {f.name: f for f in fds.file}


def reference_fdp(module_name):
    mod = __import__(module_name, fromlist=["DESCRIPTOR"])
    fdp = descriptor_pb2.FileDescriptorProto()
    mod.DESCRIPTOR.CopyToProto(fdp)
    return mod, fdp


def by_name(items):
    return {i.name: i for i in items}


def compare_named(where, kind, ours, ref):
    """Report items missing on either side; return the common names in
    reference order."""
    o, r = by_name(ours), by_name(ref)
    for n in r:
        if n not in o:
            diff(where, f"missing {kind} '{n}'")
    for n in o:
        if n not in r:
            diff(where, f"extra {kind} '{n}'")
    common = [n for n in r if n in o]
    if [n for n in (i.name for i in ours) if n in r] != common:
        notes.append(f"{where}: {kind} declaration order differs")
    return o, r, common


def compare_options(where, ours, ref):
    if ours.SerializeToString(deterministic=True) != ref.SerializeToString(
            deterministic=True):
        diff(where, f"options differ: ours={ours} ref={ref}")


def compare_enum(where, o, r):
    where = f"{where}.{r.name}"
    compare_options(where, o.options, r.options)
    ov, rv, common = compare_named(where, "enum value", o.value, r.value)
    for n in common:
        if ov[n].number != rv[n].number:
            diff(f"{where}.{n}", f"number {ov[n].number} != {rv[n].number}")
    if list(o.reserved_range) != list(r.reserved_range) or list(
            o.reserved_name) != list(r.reserved_name):
        diff(where, "enum reserved ranges/names differ")


def oneof_name(msg, field):
    if field.HasField("oneof_index"):
        return msg.oneof_decl[field.oneof_index].name
    return None


def compare_field(where, om, rm, of, rf):
    checks = [
        ("number", of.number, rf.number),
        ("type", TYPE_NAMES[of.type], TYPE_NAMES[rf.type]),
        ("label", LABEL_NAMES[of.label], LABEL_NAMES[rf.label]),
        ("type_name", of.type_name, rf.type_name),
        ("oneof", oneof_name(om, of), oneof_name(rm, rf)),
        ("proto3_optional", of.proto3_optional, rf.proto3_optional),
        ("default_value", of.default_value, rf.default_value),
        ("extendee", of.extendee, rf.extendee),
    ]
    for what, a, b in checks:
        if a != b:
            diff(where, f"{what}: ours={a!r} ref={b!r}")
    compare_options(where, of.options, rf.options)


def compare_message(where, o, r):
    where = f"{where}.{r.name}"
    compare_options(where, o.options, r.options)
    if o.options.map_entry != r.options.map_entry:
        diff(where, "map_entry flag differs")
    of, rf, common = compare_named(where, "field", o.field, r.field)
    for n in common:
        compare_field(f"{where}.{n}", o, r, of[n], rf[n])
    compare_named(where, "oneof", o.oneof_decl, r.oneof_decl)
    oe, re_, common = compare_named(where, "enum", o.enum_type, r.enum_type)
    for n in common:
        compare_enum(where, oe[n], re_[n])
    on, rn, common = compare_named(where, "nested message", o.nested_type,
                                   r.nested_type)
    for n in common:
        compare_message(where, on[n], rn[n])
    if [(x.start, x.end) for x in o.reserved_range] != [
            (x.start, x.end) for x in r.reserved_range]:
        diff(where, "reserved ranges differ")
    if list(o.reserved_name) != list(r.reserved_name):
        diff(where, "reserved names differ")
    if len(o.extension_range) != len(r.extension_range):
        diff(where, "extension ranges differ")


def compare_file(o, r):
    where = r.name
    for what, a, b in [
        ("package", o.package, r.package),
        ("syntax", o.syntax or "proto2", r.syntax or "proto2"),
        ("dependency", list(o.dependency), list(r.dependency)),
    ]:
        if a != b:
            diff(where, f"{what}: ours={a!r} ref={b!r}")
    pkg = "." + r.package if r.package else ""
    om, rm, common = compare_named(where, "message", o.message_type,
                                   r.message_type)
    for n in common:
        compare_message(pkg, om[n], rm[n])
    oe, re_, common = compare_named(where, "enum", o.enum_type, r.enum_type)
    for n in common:
        compare_enum(pkg, oe[n], re_[n])
    if len(o.extension) or len(r.extension):
        compare_named(where, "extension", o.extension, r.extension)
    os_, rs, common = compare_named(where, "service", o.service, r.service)
    for n in common:
        sw = f"{pkg}.{n}"
        compare_options(sw, os_[n].options, rs[n].options)
        omt, rmt, mcommon = compare_named(sw, "method", os_[n].method,
                                          rs[n].method)
        for m in mcommon:
            a, b = omt[m], rmt[m]
            for what, x, y in [
                ("input_type", a.input_type, b.input_type),
                ("output_type", a.output_type, b.output_type),
                ("client_streaming", a.client_streaming, b.client_streaming),
                ("server_streaming", a.server_streaming, b.server_streaming),
            ]:
                if x != y:
                    diff(f"{sw}/{m}", f"{what}: ours={x!r} ref={y!r}")


# ---------------------------------------------------------------- wire check

def fill(msg, depth, seed):
    """Populate every field of `msg`; one member per oneof, chosen by the
    rotation seed[1]; seed[0] is a running counter for values."""
    desc = msg.DESCRIPTOR
    seen_oneofs = set()
    for f in desc.fields:
        seed[0] += 1
        s = seed[0]
        if f.containing_oneof is not None:
            oo = f.containing_oneof
            if oo.name in seen_oneofs:
                continue
            # member chosen by the rotation, so successive runs cover all
            members = list(oo.fields)
            if members[seed[1] % len(members)] is not f:
                continue
            seen_oneofs.add(oo.name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            kf = f.message_type.fields_by_name["key"]
            vf = f.message_type.fields_by_name["value"]
            for i in range(2):
                key = scalar(kf, s + i)
                if vf.message_type is not None:
                    if depth < 6:
                        fill(getattr(msg, f.name)[key], depth + 1, seed)
                    else:
                        getattr(msg, f.name)[key].SetInParent()
                else:
                    getattr(msg, f.name)[key] = scalar(vf, s + i)
            continue
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 6:
                continue
            if f.is_repeated:
                for _ in range(2):
                    fill(getattr(msg, f.name).add(), depth + 1, seed)
            else:
                sub = getattr(msg, f.name)
                sub.SetInParent()
                fill(sub, depth + 1, seed)
        elif f.is_repeated:
            getattr(msg, f.name).extend([scalar(f, s), scalar(f, s + 1)])
        else:
            setattr(msg, f.name, scalar(f, s))


def scalar(f, s):
    t = f.type
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_STRING:
        return f"s{s}"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([s % 256, 0, 255])
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return float(s) + 0.5
    if t == FieldDescriptor.TYPE_ENUM:
        vals = f.enum_type.values
        v = vals[s % len(vals)].number
        return v if v != 0 or len(vals) == 1 else vals[-1].number
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
             FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
             FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_SFIXED64):
        return -(s + 1)
    return s + 1  # unsigned


def all_message_descs(file_desc):
    def walk(d):
        yield d
        for n in d.nested_types:
            yield from walk(n)
    for d in file_desc.message_types_by_name.values():
        yield from walk(d)


def has_unknown(msg):
    """True if `msg` or any sub-message kept unknown fields."""
    from google.protobuf import unknown_fields
    if len(unknown_fields.UnknownFieldSet(msg)):
        return True
    for f, v in msg.ListFields():
        if f.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        if f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            if vf.type == FieldDescriptor.TYPE_MESSAGE:
                if any(has_unknown(x) for x in v.values()):
                    return True
        elif f.is_repeated:
            if any(has_unknown(x) for x in v):
                return True
        elif has_unknown(v):
            return True
    return False


def wire_check(our_fdps, ref_modules):
    pool = descriptor_pool.DescriptorPool()
    # add in dependency order
    added = set()

    def add(name):
        if name in added:
            return
        for dep in our_fdps[name].dependency:
            add(dep)
        pool.Add(our_fdps[name])
        added.add(name)

    for name in our_fdps:
        add(name)
    for fname, mod in ref_modules:
        for rdesc in all_message_descs(mod.DESCRIPTOR):
            if rdesc.GetOptions().map_entry:
                continue
            try:
                odesc = pool.FindMessageTypeByName(rdesc.full_name)
            except KeyError:
                continue  # already reported as missing
            ocls = message_factory.GetMessageClass(odesc)
            rcls = message_factory.GetMessageClass(rdesc)
            for rot in range(5):  # largest oneof has 5 members
                ref_msg = rcls()
                fill(ref_msg, 0, [rot, rot])
                data = ref_msg.SerializeToString(deterministic=True)
                ours = ocls()
                ours.ParseFromString(data)
                if has_unknown(ours):
                    diff(rdesc.full_name, "wire: unknown fields after parse")
                back = ours.SerializeToString(deterministic=True)
                if back != data:
                    diff(rdesc.full_name,
                         "wire: re-serialized bytes differ from reference")
                    break
                # and the other direction
                again = rcls()
                again.ParseFromString(back)
                if again != ref_msg:
                    diff(rdesc.full_name, "wire: reference re-parse differs")
                    break


def main():
    available = []
    for fname, modname, required in TARGETS:
        if not os.path.exists(os.path.join(PROTO_DIR, fname)):
            if required:
                diff(fname, "file not found")
            continue
        try:
            mod, ref = reference_fdp(modname)
        except ImportError as e:
            if required:
                print(f"cannot import reference {modname}: {e}")
                sys.exit(1)
            notes.append(f"{fname}: skipped ({modname} not installed)")
            continue
        available.append((fname, mod, ref))

    with tempfile.TemporaryDirectory() as tmp:
        ours = compile_ours(tmp, [a[0] for a in available])

    for fname, mod, ref in available:
        if ref.name != fname:
            notes.append(f"{fname}: reference file is named {ref.name}")
        compare_file(ours[fname], ref)
    wire_check(ours, [(a[0], a[1]) for a in available])

    for n in notes:
        print("note:", n)
    for d in diffs:
        print("DIFF:", d)
    checked = ", ".join(a[0] for a in available)
    if diffs:
        print(f"{len(diffs)} difference(s) found ({checked})")
        sys.exit(1)
    print(f"OK: 0 differences ({checked})")


if __name__ == "__main__":
    main()
