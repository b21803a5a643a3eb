from sleepstage_cli.cli import main

main()
