from segscope.cli import command

command()
