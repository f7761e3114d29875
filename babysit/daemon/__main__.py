"""`python -m babysit.daemon`: how the user unit and the D-Bus activation file start babysitd."""

from babysit.daemon.main import main

main()
