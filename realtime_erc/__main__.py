from realtime_erc.cli import main

main()
