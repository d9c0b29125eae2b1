#!/usr/bin/env python3
"""Layout check of the public structs: every qrms_* struct of the baseline ABI
(abidw XML) must keep, in the new ABI, each of its fields with the same name,
offset and type; it may only grow at its end (SPEC 5). Fields appended after
the baseline's last one are listed, not refused.

libabigail's suppression of "data member appended at end" (abi/abidiff.suppr),
which lets appended growth pass abidiff, hides every other change to such a
struct too (a retyped field, for one); this script is what catches those.

    python3 scripts/abi_structs.py BASELINE.abi NEW.abi
Exit 0: layouts compatible; 1: a break (printed); 2: bad input.
"""
import sys
import xml.etree.ElementTree as ET


def load(path):
    """{struct name: (size in bits, [(field, offset in bits, type)])} of the header's qrms_* structs."""
    root = ET.parse(path).getroot()
    by_id = {el.get("id"): el for el in root.iter() if el.get("id")}

    def type_name(type_id, depth=0):
        el = by_id.get(type_id)
        if el is None or depth > 20:
            return "?"
        tag, name = el.tag, el.get("name")
        if tag == "pointer-type-def":
            return type_name(el.get("type-id"), depth + 1) + "*"
        if tag == "qualified-type-def":
            quals = " ".join(q for q in ("const", "volatile") if el.get(q) == "yes")
            return quals + " " + type_name(el.get("type-id"), depth + 1)
        if tag == "array-type-def":
            return "%s[%s bits]" % (type_name(el.get("type-id"), depth + 1), el.get("size-in-bits"))
        if tag == "typedef-decl":  # the name and what it stands for: a retyped typedef counts too
            return "%s(%s)" % (name, type_name(el.get("type-id"), depth + 1))
        return name or tag

    structs = {}
    for el in root.iter("class-decl"):
        name = el.get("name") or ""
        # Structs of the header only: an opaque handle's definition (qrms_optimizer_s,
        # in capi.cpp) is the library's business.
        if (not name.startswith("qrms_") or el.get("is-declaration-only") == "yes" or name in structs
                or not (el.get("filepath") or "").endswith("qrmsprop.h")):
            continue
        fields = []
        for member in el.findall("data-member"):
            var = member.find("var-decl")
            fields.append((var.get("name"), int(member.get("layout-offset-in-bits")), type_name(var.get("type-id"))))
        structs[name] = (int(el.get("size-in-bits") or 0), fields)
    return structs


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        base, new = load(argv[1]), load(argv[2])
    except (OSError, ET.ParseError) as e:
        print("abi_structs: %s" % e, file=sys.stderr)
        return 2
    if not base:
        print("abi_structs: no qrms_* struct in %s" % argv[1], file=sys.stderr)
        return 2
    breaks, growth = [], []
    for name, (size, fields) in sorted(base.items()):
        if name not in new:
            breaks.append("%s: removed" % name)
            continue
        new_size, new_fields = new[name]
        for i, (field, offset, type_) in enumerate(fields):
            got = new_fields[i] if i < len(new_fields) else None
            if got != (field, offset, type_):
                breaks.append("%s: field %d was '%s %s' at byte %d, now %s" % (
                    name, i, type_, field, offset // 8,
                    "'%s %s' at byte %d" % (got[2], got[0], got[1] // 8) if got else "missing"))
        if new_size < size:
            breaks.append("%s: shrank from %d to %d bytes" % (name, size // 8, new_size // 8))
        for field, offset, type_ in new_fields[len(fields):]:
            growth.append("%s: appended '%s %s' at byte %d" % (name, type_, field, offset // 8))
    for name in sorted(set(new) - set(base)):
        growth.append("%s: new struct" % name)
    for line in growth:
        print("  addition: " + line)
    for line in breaks:
        print("  BREAK: " + line)
    print("abi_structs: %d qrms_* structs of the baseline checked field by field, %d addition(s), %d break(s)"
          % (len(base), len(growth), len(breaks)))
    return 1 if breaks else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
