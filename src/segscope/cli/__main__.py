from segscope.cli import main

main()
