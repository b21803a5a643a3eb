from sleepstage_cli.cli.main import main

main()
