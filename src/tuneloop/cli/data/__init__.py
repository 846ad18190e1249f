"""The `data` command group: one module per stage of the data, as in `tuneloop.data` itself.

```
data/io.py       import | export | register | verify                  data in and out, the content-hash registry
data/gate.py     check | dedup | leakage | redact | split | mix | gate   the quality gate
data/create.py   augment | synth                                       new data from seeds and from code
```
Importing this package registers all three, in the order the group's help lists them.
"""

# registration order is help order: io, gate, create (not alphabetical)
from tuneloop.cli.data import io  # noqa: F401, I001
from tuneloop.cli.data import gate  # noqa: F401, I001
from tuneloop.cli.data import create  # noqa: F401, I001
