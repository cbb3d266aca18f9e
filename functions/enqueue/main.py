from taskbus.functions.enqueue import enqueue
