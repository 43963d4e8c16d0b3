from diffcsp.cli import main

main()
