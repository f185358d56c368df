from streamward.tools.cli import main

main()
