from taskbus.functions.enqueue import enqueue, enqueue_wsgi
