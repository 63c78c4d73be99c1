"""The web portal (`para web`, `para collector serve --web`): the cluster live, the jobs of
the feature database with their features, one job as `para report --html` draws it, a
node's timelines, the alerts' history; each person sees what the site lets them see.

Downstream of every other part: it reads the database the collector builds, the live view
the collector keeps, and renders jobs with the analyzer.  docs/web.md.
"""
