from polyvis.cli import entry

entry()
