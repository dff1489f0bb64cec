from slingshot.cli import main

main()
