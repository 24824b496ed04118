from umec.cli import app

app()
