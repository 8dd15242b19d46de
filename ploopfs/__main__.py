from ploopfs.cli import run

run()
