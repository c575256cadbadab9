from fedattack.cli import entry

entry()
