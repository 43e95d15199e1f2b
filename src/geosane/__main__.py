from geosane.cli import main

main()
