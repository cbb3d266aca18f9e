from taskbus.functions.console import console, console_wsgi
