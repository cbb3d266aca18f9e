"""The HTTP function targets, one module each, for functions-framework: a user's function
folder holds a `main.py` of one line (`from taskbus.functions.enqueue import enqueue`), and
`taskbus serve` loads these files directly. Nothing is imported here: each module builds its
service when it is loaded (`boot.py`)."""
