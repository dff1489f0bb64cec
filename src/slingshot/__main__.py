from slingshot.allocator import command

command()
